//! `deploy/k8s`: every YAML document parses; each overlay, the base, and the
//! base with each component is assembled as kustomize would (resources,
//! components, ConfigMap generators, strategic-merge patches with
//! `$patch: delete`, images), and what comes out is checked against the
//! services' configurations (`workloads.rs`); the NATS chart's values agree
//! with the pinned version and the streams' replicas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::docker::Dockerfile;
use super::workloads::check_stack;
use super::{Files, Problems, Service, at, int_at, normalize, scalar, seq_at, str_at};

const K8S: &str = "deploy/k8s";

/// One document of the assembled output, and the file it came from.
#[derive(Clone)]
pub struct Resource {
    pub file: PathBuf,
    pub doc: Value,
}

impl Resource {
    pub fn kind(&self) -> &str {
        str_at(&self.doc, &["kind"]).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        str_at(&self.doc, &["metadata", "name"]).unwrap_or_default()
    }
}

/// A ConfigMap's entries: key → (value, the file that sets it).
pub type Entries = BTreeMap<String, (String, PathBuf)>;

/// What `kubectl kustomize <dir>` would give, as far as these checks need.
pub struct Stack {
    pub resources: Vec<Resource>,
    pub config_maps: BTreeMap<String, Entries>,
    /// Image name → the name it is replaced with (`images:`).
    pub images: BTreeMap<String, String>,
}

/// Secrets the manifests may refer to without making them: the templates
/// (`secrets.example.yaml`), by name → key → value.
pub type Templates = BTreeMap<String, BTreeMap<String, String>>;

pub fn check(files: &Files, services: &[Service], dockerfile: &Dockerfile, problems: &mut Problems) {
    let k8s = Path::new(K8S);
    // Every document of every YAML file parses.
    let mut templates = Templates::new();
    let mut kustomizations = Vec::new();
    for path in files.under(k8s, &[".yaml", ".yml"]) {
        let documents = files.yaml(path, problems);
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            kustomizations.push((path.parent().unwrap().to_path_buf(), documents));
            continue;
        }
        if path.to_string_lossy().ends_with(".example.yaml") {
            for doc in documents.iter().filter(|d| str_at(d, &["kind"]) == Some("Secret")) {
                let keys = templates
                    .entry(str_at(doc, &["metadata", "name"]).unwrap_or_default().to_owned())
                    .or_default();
                for section in ["stringData", "data"] {
                    for (key, value) in at(doc, &[section]).and_then(Value::as_mapping).into_iter().flatten() {
                        keys.insert(
                            key.as_str().unwrap_or_default().to_owned(),
                            scalar(value).unwrap_or_default(),
                        );
                    }
                }
            }
        }
    }
    let versions = files.versions(problems);

    // What to assemble: every kustomization, and the base with each component.
    let base = k8s.join("base");
    let mut roots: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for (dir, documents) in &kustomizations {
        let label = dir.strip_prefix(k8s).unwrap_or(dir).display().to_string();
        match documents.first().and_then(|d| str_at(d, &["kind"])) {
            Some("Component") => roots.push((format!("base + {label}"), vec![base.clone(), dir.clone()])),
            _ => roots.push((label, vec![dir.clone()])),
        }
    }
    for (label, dirs) in roots {
        let mut stack = Stack {
            resources: Vec::new(),
            config_maps: BTreeMap::new(),
            images: BTreeMap::new(),
        };
        problems.within(Some(label.clone()));
        for dir in &dirs {
            assemble(files, dir, &mut stack, problems, &mut Vec::new());
        }
        let nats = nats_values(files, &label, problems);
        check_stack(
            &stack,
            services,
            dockerfile,
            &templates,
            &versions,
            nats.as_ref(),
            problems,
        );
        problems.within(None);
    }
    check_nats_values(files, &versions, &templates, problems);
}

// ---------------------------------------------------------------- assembly

fn assemble(files: &Files, dir: &Path, stack: &mut Stack, problems: &mut Problems, visiting: &mut Vec<PathBuf>) {
    let path = dir.join("kustomization.yaml");
    if visiting.contains(&path) {
        problems.at(&path, "includes itself");
        return;
    }
    visiting.push(path.clone());
    let Some(kustomization) = files.yaml(&path, problems).into_iter().next() else {
        visiting.pop();
        return;
    };
    let known = [
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "components",
        "configMapGenerator",
        "patches",
        "images",
    ];
    for key in kustomization.as_mapping().into_iter().flat_map(|m| m.keys()) {
        let key = key.as_str().unwrap_or_default();
        if !known.contains(&key) {
            problems.at(
                &path,
                format!("`{key}`: this test does not know what it does to the output; teach it (manifests/k8s.rs)"),
            );
        }
    }
    let entries = |field: &str| -> Vec<String> {
        seq_at(&kustomization, &[field])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    for entry in entries("resources").into_iter().chain(entries("components")) {
        let target = normalize(&dir.join(&entry));
        if files.is_dir(&target) {
            assemble(files, &target, stack, problems, visiting);
        } else if files.exists(&target) {
            for doc in files.yaml(&target, problems) {
                stack.resources.push(Resource {
                    file: target.clone(),
                    doc,
                });
            }
        } else {
            problems.at(&path, format!("{entry}: no such file or directory"));
        }
    }
    for generator in seq_at(&kustomization, &["configMapGenerator"]) {
        let name = str_at(generator, &["name"]).unwrap_or_default().to_owned();
        let mut generated = Entries::new();
        for env in seq_at(generator, &["envs"]).iter().filter_map(Value::as_str) {
            let env_path = normalize(&dir.join(env));
            for (key, value) in files.env_file(&env_path, false, problems) {
                generated.insert(key, (value, env_path.clone()));
            }
        }
        for literal in seq_at(generator, &["literals"]).iter().filter_map(Value::as_str) {
            let (key, value) = literal.split_once('=').unwrap_or((literal, ""));
            generated.insert(key.to_owned(), (value.to_owned(), path.clone()));
        }
        // `key=path` or `path` (the key is then the file's name), relative
        // to the kustomization, which kustomize keeps files within.
        for entry in seq_at(generator, &["files"]).iter().filter_map(Value::as_str) {
            let (key, file) = match entry.split_once('=') {
                Some((key, file)) => (key.to_owned(), file),
                None => (
                    Path::new(entry)
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    entry,
                ),
            };
            let file_path = normalize(&dir.join(file));
            if !file_path.starts_with(dir) {
                problems.at(
                    &path,
                    format!(
                        "ConfigMap {name}: {file} is outside {} (kustomize refuses it)",
                        dir.display()
                    ),
                );
            }
            match files.text(&file_path) {
                Some(text) => {
                    generated.insert(key, (text.to_owned(), file_path));
                }
                None => problems.at(&path, format!("ConfigMap {name}: no file {file}")),
            }
        }
        match str_at(generator, &["behavior"]).unwrap_or("create") {
            "merge" => match stack.config_maps.get_mut(&name) {
                Some(existing) => existing.extend(generated),
                None => problems.at(&path, format!("ConfigMap {name}: merges into nothing")),
            },
            "replace" => {
                stack.config_maps.insert(name, generated);
            }
            _ => {
                if stack.config_maps.insert(name.clone(), generated).is_some() {
                    problems.at(&path, format!("ConfigMap {name}: made twice"));
                }
            }
        }
    }
    for patch in seq_at(&kustomization, &["patches"]) {
        if patch.get("target").is_some() {
            problems.at(
                &path,
                "a patch with `target` (JSON 6902): this test applies strategic-merge patches only",
            );
            continue;
        }
        let (patch_file, documents) = match (str_at(patch, &["path"]), str_at(patch, &["patch"])) {
            (Some(file), _) => {
                let file = normalize(&dir.join(file));
                let documents = files.yaml(&file, problems);
                (file, documents)
            }
            (None, Some(text)) => (
                path.clone(),
                super::yaml_documents(text).unwrap_or_else(|e| {
                    problems.at(&path, format!("an inline patch is not YAML: {e}"));
                    Vec::new()
                }),
            ),
            (None, None) => {
                problems.at(&path, "a patch with neither `path` nor `patch`");
                continue;
            }
        };
        for document in documents {
            apply_patch(stack, &patch_file, &document, problems);
        }
    }
    for image in seq_at(&kustomization, &["images"]) {
        let name = str_at(image, &["name"]).unwrap_or_default();
        let new_name = str_at(image, &["newName"]).unwrap_or(name);
        stack.images.insert(name.to_owned(), new_name.to_owned());
    }
    visiting.pop();
}

/// A strategic-merge patch: maps merge, lists of named items merge by name,
/// `null` removes, `$patch: delete` removes the resource.
fn apply_patch(stack: &mut Stack, file: &Path, patch: &Value, problems: &mut Problems) {
    let kind = str_at(patch, &["kind"]).unwrap_or_default();
    let name = str_at(patch, &["metadata", "name"]).unwrap_or_default();
    let Some(index) = stack
        .resources
        .iter()
        .position(|r| r.kind() == kind && r.name() == name)
    else {
        problems.at(file, format!("patches {kind} {name}, which is not in the output"));
        return;
    };
    if str_at(patch, &["$patch"]) == Some("delete") {
        stack.resources.remove(index);
    } else {
        merge(&mut stack.resources[index].doc, patch);
    }
}

fn merge(base: &mut Value, patch: &Value) {
    let named = |items: &[Value]| items.iter().all(|i| str_at(i, &["name"]).is_some());
    match (base, patch) {
        (Value::Mapping(base), Value::Mapping(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(existing) = base.get_mut(key) {
                    merge(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(patch)) if named(base) && named(patch) => {
            for item in patch {
                let name = str_at(item, &["name"]);
                match base.iter_mut().find(|b| str_at(b, &["name"]) == name) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

// -------------------------------------------------------------------- NATS

/// What a Helm values file for the NATS chart gives.
pub struct NatsCluster {
    pub file: PathBuf,
    pub nodes: u32,
    pub monitor_port: u16,
}

/// The values file an assembled output runs against: `values-dev.yaml` for
/// the dev overlay, `values.yaml` for the others.
fn nats_values(files: &Files, label: &str, problems: &mut Problems) -> Option<NatsCluster> {
    let name = if label.contains("dev") {
        "values-dev.yaml"
    } else {
        "values.yaml"
    };
    let file = Path::new(K8S).join("nats").join(name);
    let values = files.yaml(&file, problems).into_iter().next()?;
    let clustered = at(&values, &["config", "cluster", "enabled"]).and_then(Value::as_bool) == Some(true);
    let nodes = if clustered {
        int_at(&values, &["config", "cluster", "replicas"]).unwrap_or(3)
    } else {
        1
    };
    Some(NatsCluster {
        file,
        nodes: u32::try_from(nodes).unwrap_or(0),
        monitor_port: int_at(&values, &["config", "monitor", "port"])
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(8222),
    })
}

/// The users a NATS configuration file (`deploy/nats-auth.conf`) declares,
/// and the environment variables its passwords come from.
fn nats_users(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut users, mut variables) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().trim_matches(['"', ',', ';']).trim();
        match key.trim() {
            "user" => users.push(value.to_owned()),
            "password" => variables.extend(value.strip_prefix('$').map(str::to_owned)),
            _ => {}
        }
    }
    (users, variables)
}

fn check_nats_values(
    files: &Files,
    versions: &BTreeMap<String, String>,
    templates: &Templates,
    problems: &mut Problems,
) {
    let version = versions.get("NATS_SERVER_VERSION").cloned().unwrap_or_default();
    for file in files.under(&Path::new(K8S).join("nats"), &[".yaml"]) {
        let Some(values) = files.yaml(file, problems).into_iter().next() else {
            continue;
        };
        let tag = str_at(&values, &["container", "image", "tag"]).unwrap_or_default();
        if tag != version && !tag.starts_with(&format!("{version}-")) {
            problems.at(
                file,
                format!("container.image.tag {tag:?} is not NATS_SERVER_VERSION={version} (deploy/versions.env)"),
            );
        }
        for (path, what) in [
            (&["config", "jetstream", "enabled"][..], "JetStream"),
            (
                &["config", "jetstream", "fileStore", "enabled"][..],
                "JetStream file storage",
            ),
            (
                &["config", "jetstream", "fileStore", "pvc", "enabled"][..],
                "a persistent volume for the file store",
            ),
        ] {
            if at(&values, path).and_then(Value::as_bool) != Some(true) {
                problems.at(file, format!("{} must be true ({what})", path.join(".")));
            }
        }
        // An included users file (nats-auth.conf): every password it reads
        // from the environment is set, and every service's user is in it.
        if let Some(include) = str_at(&values, &["config", "merge", "$include"]) {
            let name = Path::new(include).file_name().unwrap_or_default();
            let auth = Path::new("deploy").join(name);
            match files.text(&auth) {
                None => problems.at(file, format!("$include {include}: there is no {}", auth.display())),
                Some(text) => {
                    let (users, variables) = nats_users(text);
                    for variable in variables {
                        if at(&values, &["container", "env", variable.as_str()]).is_none() {
                            problems.at(
                                file,
                                format!("container.env has no {variable}, the password {} reads", auth.display()),
                            );
                        }
                    }
                    for (secret, keys) in templates.iter().filter(|(name, _)| name.ends_with("-nats")) {
                        let user = keys.get("user").map(String::as_str).unwrap_or_default();
                        if !users.iter().any(|u| u == user) {
                            problems.at(
                                file,
                                format!(
                                    "the template of Secret {secret} names user {user:?}, which {} lacks",
                                    auth.display()
                                ),
                            );
                        }
                    }
                }
            }
        }
        if at(&values, &["config", "cluster", "enabled"]).and_then(Value::as_bool) == Some(true)
            && int_at(&values, &["config", "cluster", "replicas"]).is_some_and(|n| n < 3)
        {
            problems.at(
                file,
                "a JetStream cluster needs 3 nodes to keep a quorum through the loss of one",
            );
        }
    }
}
