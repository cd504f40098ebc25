//! CNI STATUS: the state opens and the programs load.

use super::*;

impl Call<'_> {
    pub(super) fn status(&self) -> Result<()> {
        Registry::probe(&self.conf.bpffs_dir()).map_err(|(what, e, limited)| {
            CniError::new(
                if limited {
                    ERR_LIMITED_CONNECTIVITY
                } else {
                    ERR_NOT_AVAILABLE
                },
                format!("{what}: {e}"),
            )
        })?;
        if let Some(ipam) = &self.conf.ipam {
            let plugin = self
                .find_plugin(&ipam.kind)
                .map_err(|e| CniError::new(ERR_NOT_AVAILABLE, e.msg))?;
            if self.plugin_supports(&plugin, "1.1.0") {
                exec_plugin(&plugin, "STATUS", self.env, self.stdin)?;
            }
        }
        Ok(())
    }
}
