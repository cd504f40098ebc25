//! Pod sandbox create/delete wall time through containerd's CRI (RunPodSandbox, then
//! Stop+RemovePodSandbox), vethfp against a ptp-only conflist. The work is done by the
//! `vethfp-cri-bench` binary of the test crate (it shares the CRI harness of
//! tests/tests/cri_node.rs); this runs it and reports medians.

use super::Vethfp;
use crate::util::{cargo_cmd, raw_output, run, step, target_dir};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct PodRow {
    pub conflist: String,
    pub first_create_ms: f64,
    pub create_median_ms: f64,
    pub delete_median_ms: f64,
    pub create_ms: Vec<f64>,
    pub delete_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct PodBench {
    pub sandboxes: usize,
    pub rows: Vec<PodRow>,
    pub skipped: Option<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `sandboxes` create/delete cycles per conflist (plus one warm-up each).
pub fn bench(vethfp: Option<&Vethfp>, sandboxes: usize) -> Result<PodBench> {
    let skip = |why: String| {
        println!("bench: WARNING: pod sandbox bench skipped: {why}");
        Ok(PodBench {
            sandboxes,
            rows: vec![],
            skipped: Some(why),
        })
    };
    let Some(v) = vethfp else {
        return skip("no vethfp binary".into());
    };
    step("cargo build -p vethfp-tests --bin vethfp-cri-bench");
    run(cargo_cmd().args(["build", "-p", "vethfp-tests", "--bin", "vethfp-cri-bench"]))?;
    let bin = target_dir()?.join("debug").join("vethfp-cri-bench");
    step(&format!(
        "pod sandboxes through containerd's CRI: {sandboxes} per conflist"
    ));
    let out = raw_output(
        Command::new(&bin)
            .arg(sandboxes.to_string())
            .env("VETHFP_BIN", std::fs::canonicalize(&v.bin)?),
    )?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} printed no JSON", bin.display()))?;
    if let Some(why) = j["skipped"].as_str() {
        return skip(why.to_string());
    }
    let nums = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let rows = j["results"]
        .as_array()
        .context("no results")?
        .iter()
        .map(|r| {
            let (c, d) = (nums(&r["create_ms"]), nums(&r["delete_ms"]));
            PodRow {
                conflist: r["conflist"].as_str().unwrap_or("?").to_string(),
                first_create_ms: r["first_create_ms"].as_f64().unwrap_or(f64::NAN),
                create_median_ms: median(&c),
                delete_median_ms: median(&d),
                create_ms: c,
                delete_ms: d,
            }
        })
        .collect();
    let b = PodBench {
        sandboxes,
        rows,
        skipped: None,
    };
    print!("{}", b.markdown());
    Ok(b)
}

impl PodBench {
    /// The section was left out with `--only`.
    pub fn not_selected() -> Self {
        PodBench {
            sandboxes: 0,
            rows: vec![],
            skipped: Some("not selected (--only)".into()),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("\n## Pod sandboxes (containerd CRI)\n\n");
        if let Some(why) = &self.skipped {
            s += &format!("Skipped: {why}\n");
            return s;
        }
        s += &format!(
            "RunPodSandbox and Stop+RemovePodSandbox wall time, median of {} per conflist \
             (interleaved; the first sandbox of each node, which loads the BPF programs, \
             apart). ptp waits for IPv6 DAD in the pod: dual-stack rows differ mostly by \
             that.\n\n",
            self.sandboxes
        );
        s += "| conflist | create ms | delete ms | first create ms |\n| --- | ---: | ---: | ---: |\n";
        for r in &self.rows {
            s += &format!(
                "| {} | {:.1} | {:.1} | {:.1} |\n",
                r.conflist, r.create_median_ms, r.delete_median_ms, r.first_create_ms
            );
        }
        s
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("pods.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}
