//! Delegation to other plugins (IPAM, STATUS/GC pass-through): finding, versions, exec.

use super::*;

impl Call<'_> {
    pub(super) fn find_plugin(&self, name: &str) -> Result<PathBuf> {
        find_plugin(self.env.path.as_deref().unwrap_or_default(), name)
    }

    pub(super) fn plugin_supports(&self, plugin: &Path, version: &str) -> bool {
        plugin_versions(plugin, self.env)
            .map(|v| v.iter().any(|s| s == version))
            .unwrap_or(false)
    }

    /// Runs the IPAM plugin for `command` with our environment and stdin. If it does not speak
    /// the config's version (Debian's plugins 1.1 stop at 1.0.0), asks it for its versions and
    /// retries once with the newest older one it supports; the result formats agree.
    pub(super) fn ipam_exec(&self, name: &str, command: &str) -> Result<Vec<u8>> {
        let plugin = self.find_plugin(name)?;
        match exec_plugin(&plugin, command, self.env, self.stdin) {
            Err(e) if e.code == ERR_INCOMPATIBLE_VERSION => {
                let theirs = plugin_versions(&plugin, self.env)?;
                let Some(v) = SUPPORTED_VERSIONS
                    .iter()
                    .rev()
                    .filter(|v| version_at_least(&self.conf.cni_version, v))
                    .find(|v| theirs.iter().any(|t| t == *v))
                else {
                    return Err(e);
                };
                let mut conf = self.raw.clone();
                if let Some(o) = conf.as_object_mut() {
                    o.insert("cniVersion".into(), json!(v));
                    o.remove("prevResult");
                }
                let bytes = serde_json::to_vec(&conf).expect("a Value always serialises");
                exec_plugin(&plugin, command, self.env, &bytes)
            }
            r => r,
        }
    }
}

/// Finds plugin `name` in the colon-separated `cni_path`.
pub(crate) fn find_plugin(cni_path: &str, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            format!("\"ipam\": \"type\" '{name}' is not a plugin name"),
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CniError::new(
                ERR_IPAM,
                format!("IPAM plugin '{name}' not found in CNI_PATH ({cni_path})"),
            )
        })
}

/// Runs another plugin with `command`, the caller's CNI environment and `stdin`; its stdout
/// on success, its CNI error (passed through with its code) on failure.
pub(super) fn exec_plugin(
    plugin: &Path,
    command: &str,
    env: &CniEnv,
    stdin: &[u8],
) -> Result<Vec<u8>> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let io =
        |e: std::io::Error| CniError::new(ERR_IPAM, format!("running {}: {e}", plugin.display()));
    let mut child = cmd.spawn().map_err(io)?;
    if let Some(mut w) = child.stdin.take() {
        // A plugin may exit without reading everything (e.g. VERSION): ignore EPIPE.
        let _ = w.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    #[derive(Deserialize)]
    struct PluginError {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<PluginError>(&out.stdout) {
        Ok(pe) => {
            Err(CniError::new(pe.code, format!("{name} {command}: {}", pe.msg)).details(pe.details))
        }
        Err(_) => Err(CniError::new(
            ERR_IPAM,
            format!(
                "{name} {command} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(if out.stdout.is_empty() {
                    &out.stderr
                } else {
                    &out.stdout
                })
                .trim()
            ),
        )),
    }
}

/// The spec versions another plugin supports (its VERSION answer).
pub(super) fn plugin_versions(plugin: &Path, env: &CniEnv) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct VersionInfo {
        #[serde(rename = "supportedVersions", default)]
        supported: Vec<String>,
    }
    let out = exec_plugin(
        plugin,
        "VERSION",
        env,
        format!("{{\"cniVersion\":\"{CURRENT_VERSION}\"}}").as_bytes(),
    )?;
    let v: VersionInfo = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            ERR_IPAM,
            format!("{} VERSION answered unreadable JSON: {e}", plugin.display()),
        )
    })?;
    Ok(v.supported)
}
