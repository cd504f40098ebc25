//! `cargo xtask public-api [--bless]`: the `vethfp` library's public API as one sorted line per
//! item (modules, types, fields, variants, functions with their signatures, trait impls),
//! compared with the committed snapshot veth-user/public-api.txt. A change to the API shows up
//! as a diff in review; `--bless` writes the new snapshot.
//!
//! Source: rustdoc's JSON output (nightly `-Z unstable-options --output-format json`), walked
//! from the crate root through public modules and re-exports, so only what a user can name is
//! listed (the `internals` feature the tests use is off).

use crate::util::{cargo_cmd, run, step, target_dir, workspace_root};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeSet;

const SNAPSHOT: &str = "veth-user/public-api.txt";

pub fn public_api(bless: bool) -> Result<()> {
    step("cargo +nightly rustdoc -p veth-user --lib (JSON)");
    let mut cmd = cargo_cmd();
    // rustup's proxy picks the toolchain from RUSTUP_TOOLCHAIN.
    cmd.env("RUSTUP_TOOLCHAIN", "nightly").args([
        "rustdoc",
        "-p",
        "veth-user",
        "--lib",
        "--",
        "-Z",
        "unstable-options",
        "--output-format",
        "json",
    ]);
    run(&mut cmd).context("rustdoc JSON of veth-user failed")?;
    let path = target_dir()?.join("doc").join("vethfp.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).context("parsing rustdoc JSON")?;
    let lines = render(&doc)?;
    // The first line names the rustdoc JSON format the snapshot was made with: a nightly
    // speaking another one may render the same API differently.
    let format = doc["format_version"].as_u64().unwrap_or(0);
    let header = format!(
        "# vethfp public API (rustdoc JSON format {format}; `cargo xtask public-api --bless`)"
    );
    let new: String = std::iter::once(&header)
        .chain(lines.iter())
        .map(|l| format!("{l}\n"))
        .collect();
    let snap = workspace_root().join(SNAPSHOT);
    if bless {
        std::fs::write(&snap, &new)?;
        println!("xtask: wrote {} ({} items)", snap.display(), lines.len());
        return Ok(());
    }
    let old = std::fs::read_to_string(&snap).unwrap_or_default();
    if old == new {
        println!("xtask: public API unchanged ({} items)", lines.len());
        return Ok(());
    }
    let old: BTreeSet<&str> = old.lines().collect();
    let newset: BTreeSet<&str> = new.lines().collect();
    for l in old.difference(&newset) {
        println!("- {l}");
    }
    for l in newset.difference(&old) {
        println!("+ {l}");
    }
    if !old.contains(header.as_str()) {
        println!(
            "xtask: warning: {SNAPSHOT} was made with another rustdoc JSON format than this \
             nightly's ({format}): the diff above may be rendering only; not failing. Run \
             `cargo xtask public-api --bless` with this toolchain to compare exactly."
        );
        return Ok(());
    }
    bail!(
        "the public API of the vethfp library changed (diff above): if that is intended, run \
         `cargo xtask public-api --bless` and commit {SNAPSHOT}"
    )
}

struct Walker<'a> {
    index: &'a serde_json::Map<String, Value>,
    out: BTreeSet<String>,
    seen: BTreeSet<(String, String)>,
}

fn render(doc: &Value) -> Result<Vec<String>> {
    let index = doc["index"]
        .as_object()
        .context("rustdoc JSON has no index")?;
    let root = id_str(&doc["root"]);
    let mut w = Walker {
        index,
        out: BTreeSet::new(),
        seen: BTreeSet::new(),
    };
    w.item(&root, "vethfp", true);
    Ok(w.out.into_iter().collect())
}

fn id_str(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

impl Walker<'_> {
    fn get(&self, id: &str) -> Option<&Value> {
        self.index.get(id)
    }

    /// Walks item `id`, named by `path` (its public path).
    fn item(&mut self, id: &str, path: &str, is_root: bool) {
        if !self.seen.insert((id.to_string(), path.to_string())) {
            return;
        }
        let Some(it) = self.get(id).cloned() else {
            return;
        };
        if !is_root && it["visibility"] != "public" && it["inner"].get("variant").is_none() {
            // Trait impl items and variants carry "default"; everything else must be public.
            if it["visibility"] != "default" {
                return;
            }
        }
        let inner = &it["inner"];
        let Some((kind, body)) = inner.as_object().and_then(|o| o.iter().next()) else {
            return;
        };
        match kind.as_str() {
            "module" => {
                if !is_root {
                    self.out.insert(format!("pub mod {path}"));
                }
                for c in body["items"].as_array().into_iter().flatten() {
                    let cid = id_str(c);
                    let name = self
                        .get(&cid)
                        .and_then(|c| c["name"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    if let Some(u) = self.get(&cid).and_then(|c| c["inner"].get("use")).cloned() {
                        let target = id_str(&u["id"]);
                        let uname = u["name"].as_str().unwrap_or_default();
                        if target.is_empty() || self.get(&target).is_none() {
                            self.out.insert(format!(
                                "pub use {path}::{uname} = {}",
                                u["source"].as_str().unwrap_or_default()
                            ));
                        } else {
                            self.item(&target, &format!("{path}::{uname}"), false);
                        }
                        continue;
                    }
                    self.item(&cid, &format!("{path}::{name}"), false);
                }
            }
            "struct" => {
                self.out
                    .insert(format!("pub struct {path}{}", generics(&body["generics"])));
                let k = &body["kind"];
                if let Some(p) = k.get("plain") {
                    for f in p["fields"].as_array().into_iter().flatten() {
                        self.field(&id_str(f), path);
                    }
                    if p["has_stripped_fields"] == true {
                        self.out
                            .insert(format!("pub struct {path} (has private fields)"));
                    }
                } else if let Some(t) = k.get("tuple") {
                    for (i, f) in t.as_array().into_iter().flatten().enumerate() {
                        if f.is_null() {
                            continue;
                        }
                        let fid = id_str(f);
                        if let Some(fi) = self.get(&fid)
                            && fi["visibility"] == "public"
                        {
                            let ty = ty(&fi["inner"]["struct_field"]);
                            self.out
                                .insert(format!("pub struct field {path}::{i}: {ty}"));
                        }
                    }
                }
                self.impls(&body["impls"], path);
            }
            "enum" => {
                self.out
                    .insert(format!("pub enum {path}{}", generics(&body["generics"])));
                for v in body["variants"].as_array().into_iter().flatten() {
                    let vid = id_str(v);
                    let Some(vi) = self.get(&vid).cloned() else {
                        continue;
                    };
                    let name = vi["name"].as_str().unwrap_or_default();
                    let vk = &vi["inner"]["variant"]["kind"];
                    let shape = if let Some(t) = vk.get("tuple") {
                        let tys: Vec<String> = t
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|f| {
                                self.get(&id_str(f))
                                    .map(|fi| ty(&fi["inner"]["struct_field"]))
                                    .unwrap_or_else(|| "_".into())
                            })
                            .collect();
                        format!("({})", tys.join(", "))
                    } else if let Some(s) = vk.get("struct") {
                        let fs: Vec<String> = s["fields"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|f| {
                                let fi = self.get(&id_str(f))?;
                                Some(format!(
                                    "{}: {}",
                                    fi["name"].as_str()?,
                                    ty(&fi["inner"]["struct_field"])
                                ))
                            })
                            .collect();
                        format!(" {{ {} }}", fs.join(", "))
                    } else {
                        String::new()
                    };
                    self.out
                        .insert(format!("pub variant {path}::{name}{shape}"));
                }
                self.impls(&body["impls"], path);
            }
            "function" => {
                self.out.insert(format!("pub fn {path}{}", sig(body)));
            }
            "constant" => {
                self.out
                    .insert(format!("pub const {path}: {}", ty(&body["type"])));
            }
            "static" => {
                self.out
                    .insert(format!("pub static {path}: {}", ty(&body["type"])));
            }
            "type_alias" => {
                self.out
                    .insert(format!("pub type {path} = {}", ty(&body["type"])));
            }
            "trait" => {
                self.out.insert(format!("pub trait {path}"));
                for m in body["items"].as_array().into_iter().flatten() {
                    if let Some(mi) = self.get(&id_str(m)).cloned() {
                        let n = mi["name"].as_str().unwrap_or_default();
                        if let Some(f) = mi["inner"].get("function") {
                            self.out.insert(format!("pub fn {path}::{n}{}", sig(f)));
                        }
                    }
                }
            }
            "macro" => {
                self.out.insert(format!("pub macro {path}!"));
            }
            _ => {}
        }
    }

    fn field(&mut self, id: &str, owner: &str) {
        if let Some(f) = self.get(id)
            && f["visibility"] == "public"
        {
            let name = f["name"].as_str().unwrap_or_default();
            let t = ty(&f["inner"]["struct_field"]);
            self.out
                .insert(format!("pub struct field {owner}::{name}: {t}"));
        }
    }

    fn impls(&mut self, impls: &Value, owner: &str) {
        for i in impls.as_array().into_iter().flatten() {
            let Some(imp) = self.get(&id_str(i)).cloned() else {
                continue;
            };
            let b = &imp["inner"]["impl"];
            if b["is_synthetic"] == true || !b["blanket_impl"].is_null() {
                continue;
            }
            if let Some(tr) = b["trait"].as_object() {
                let name = path_name(tr);
                // Auto and derive-only marker traits are noise; what a user can call stays.
                self.out.insert(format!("impl {name} for {owner}"));
                continue;
            }
            for m in b["items"].as_array().into_iter().flatten() {
                let Some(mi) = self.get(&id_str(m)).cloned() else {
                    continue;
                };
                if mi["visibility"] != "public" {
                    continue;
                }
                let n = mi["name"].as_str().unwrap_or_default();
                if let Some(f) = mi["inner"].get("function") {
                    self.out.insert(format!("pub fn {owner}::{n}{}", sig(f)));
                } else if let Some(c) = mi["inner"].get("assoc_const") {
                    self.out
                        .insert(format!("pub const {owner}::{n}: {}", ty(&c["type"])));
                }
            }
        }
    }
}

fn path_name(p: &serde_json::Map<String, Value>) -> String {
    let full = p
        .get("path")
        .or_else(|| p.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("_");
    // As written in the source (`crate::types::Cidr`, `std::result::Result`): the last
    // segment is what a user sees; the item lines give the full public paths.
    let base = full.rsplit("::").next().unwrap_or(full).to_string();
    let args = p.get("args").map(generic_args).unwrap_or_default();
    format!("{base}{args}")
}

fn generic_args(a: &Value) -> String {
    if let Some(ab) = a.get("angle_bracketed") {
        let parts: Vec<String> = ab["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                if let Some(t) = x.get("type") {
                    ty(t)
                } else if let Some(l) = x.get("lifetime") {
                    l.as_str().unwrap_or("'_").to_string()
                } else if let Some(c) = x.get("const") {
                    c["expr"].as_str().unwrap_or("_").to_string()
                } else {
                    "_".into()
                }
            })
            .collect();
        let cons: Vec<String> = ab["constraints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let n = c["name"].as_str().unwrap_or("_");
                let t = c["binding"]
                    .get("equality")
                    .and_then(|e| e.get("type"))
                    .map(ty)
                    .unwrap_or_else(|| "_".into());
                format!("{n} = {t}")
            })
            .collect();
        let all: Vec<String> = parts.into_iter().chain(cons).collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("<{}>", all.join(", "))
        }
    } else if let Some(p) = a.get("parenthesized") {
        let ins: Vec<String> = p["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(ty)
            .collect();
        let out = if p["output"].is_null() {
            String::new()
        } else {
            format!(" -> {}", ty(&p["output"]))
        };
        format!("({}){out}", ins.join(", "))
    } else {
        String::new()
    }
}

fn bounds(b: &Value) -> String {
    b.as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            if let Some(tb) = x.get("trait_bound") {
                tb["trait"]
                    .as_object()
                    .map(path_name)
                    .unwrap_or_else(|| "_".into())
            } else if let Some(o) = x.get("outlives") {
                o.as_str().unwrap_or("'_").to_string()
            } else {
                "_".into()
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn ty(t: &Value) -> String {
    let Some((k, v)) = t.as_object().and_then(|o| o.iter().next()) else {
        return "_".into();
    };
    match k.as_str() {
        "resolved_path" => v.as_object().map(path_name).unwrap_or_else(|| "_".into()),
        "primitive" | "generic" => v.as_str().unwrap_or("_").to_string(),
        "borrowed_ref" => {
            let lt = v["lifetime"]
                .as_str()
                .map(|l| format!("{l} "))
                .unwrap_or_default();
            let m = if v["is_mutable"] == true { "mut " } else { "" };
            format!("&{lt}{m}{}", ty(&v["type"]))
        }
        "raw_pointer" => {
            let m = if v["is_mutable"] == true {
                "mut"
            } else {
                "const"
            };
            format!("*{m} {}", ty(&v["type"]))
        }
        "tuple" => {
            let parts: Vec<String> = v.as_array().into_iter().flatten().map(ty).collect();
            format!("({})", parts.join(", "))
        }
        "slice" => format!("[{}]", ty(v)),
        "array" => format!("[{}; {}]", ty(&v["type"]), v["len"].as_str().unwrap_or("_")),
        "impl_trait" => format!("impl {}", bounds(v)),
        "dyn_trait" => {
            let traits: Vec<String> = v["traits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["trait"].as_object().map(path_name).unwrap_or_default())
                .collect();
            format!("dyn {}", traits.join(" + "))
        }
        "qualified_path" => format!(
            "<{} as {}>::{}",
            ty(&v["self_type"]),
            v["trait"].as_object().map(path_name).unwrap_or_default(),
            v["name"].as_str().unwrap_or("_")
        ),
        "function_pointer" => "fn(..)".into(),
        _ => "_".into(),
    }
}

fn generics(g: &Value) -> String {
    let ps: Vec<String> = g["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            // Elided and synthetic (impl Trait) parameters are not written by users.
            let synthetic = p["kind"]
                .get("type")
                .is_some_and(|t| t["is_synthetic"] == true);
            let elided = p["kind"].get("lifetime").is_some() && p["name"].as_str() == Some("'_");
            !(synthetic || elided)
        })
        .map(|p| {
            let n = p["name"].as_str().unwrap_or("_").to_string();
            match p["kind"].get("type") {
                Some(t) if !bounds(&t["bounds"]).is_empty() => {
                    format!("{n}: {}", bounds(&t["bounds"]))
                }
                _ => n,
            }
        })
        .collect();
    if ps.is_empty() {
        String::new()
    } else {
        format!("<{}>", ps.join(", "))
    }
}

fn sig(f: &Value) -> String {
    let s = &f["sig"];
    let ins: Vec<String> = s["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p[0].as_str().unwrap_or("_");
            let t = ty(&p[1]);
            if name == "self" {
                match t.as_str() {
                    "&Self" => "&self".into(),
                    "&mut Self" => "&mut self".into(),
                    "Self" => "self".into(),
                    _ => format!("self: {t}"),
                }
            } else {
                format!("{name}: {t}")
            }
        })
        .collect();
    let out = if s["output"].is_null() {
        String::new()
    } else {
        format!(" -> {}", ty(&s["output"]))
    };
    let asyn = if f["header"]["is_async"] == true {
        " (async)"
    } else {
        ""
    };
    format!(
        "{}({}){out}{asyn}",
        generics(&f["generics"]),
        ins.join(", ")
    )
}
