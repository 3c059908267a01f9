//! The deployment files agree with the code (issue 12, acceptance 1), with no
//! cluster and no Docker engine: `docker/Dockerfile`, `deploy/compose.yaml`
//! with `deploy/.env.example`, and every YAML document under `deploy/k8s`,
//! each overlay and component assembled as kustomize would (resources,
//! components, ConfigMap generators, strategic-merge patches, images).
//!
//! What a service accepts comes from its own clap configuration
//! (`Config::command()`): every `TRIBUTARY_*` variable a file sets must be one
//! of its arguments' `env` (and not a hidden test failpoint); its port is the
//! `--listen` the file sets or the flag's default; its shutdown grace likewise.
//! Every problem names the file that holds it; all are reported at once.
//! `planted_mistakes_are_reported` shows that each kind of check can fail.

mod compose;
mod docker;
mod k8s;
mod workloads;

/// The compose health probe (`docker/probe.rs`), built into every image by
/// the Dockerfile; its `main` is the image's, not ours.
#[expect(dead_code, reason = "the probe's main is the binary's entry point, not called here")]
#[path = "../../../../docker/probe.rs"]
mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

#[test]
fn the_deployment_files_agree_with_the_code() {
    let files = Files::from_disk();
    let problems = check_all(&files);
    assert!(
        problems.is_empty(),
        "{} problem(s) in the deployment files:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// Each kind of check fails on a file that is wrong, naming the file and
/// what is wrong in it.
#[test]
fn planted_mistakes_are_reported() {
    let files = Files::from_disk();
    assert!(check_all(&files).is_empty(), "the files as they are must pass first");
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // A variable no service has.
        (
            "deploy/compose.yaml",
            "      TRIBUTARY_MQTT_CLIENT_ID: tributary-producer\n",
            "      TRIBUTARY_MQTT_CLIENT_ID: tributary-producer\n      TRIBUTARY_MQTT_CLIENTID: oops\n",
            &["deploy/compose.yaml", "TRIBUTARY_MQTT_CLIENTID", "tributary-producer"],
        ),
        // A health check on the wrong port.
        (
            "deploy/compose.yaml",
            "\"127.0.0.1:9102\", \"/readyz\"",
            "\"127.0.0.1:9103\", \"/readyz\"",
            &["deploy/compose.yaml", "sink", "9103", "9102"],
        ),
        // A test failpoint set in a deployment.
        (
            "deploy/k8s/base/config/transformer.env",
            "TRIBUTARY_DURABLE=transformer\n",
            "TRIBUTARY_DURABLE=transformer\nTRIBUTARY_TEST_LEAVE_UNACKED=5\n",
            &[
                "deploy/k8s/base/config/transformer.env",
                "TRIBUTARY_TEST_LEAVE_UNACKED",
                "hidden",
            ],
        ),
        // A variable of another service in a shared ConfigMap.
        (
            "deploy/k8s/base/config/common.env",
            "TRIBUTARY_LOG=info\n",
            "TRIBUTARY_LOG=info\nTRIBUTARY_DATABASE_URL=postgres://x@db/x\n",
            &[
                "deploy/k8s/base/config/common.env",
                "TRIBUTARY_DATABASE_URL",
                "tributary-transformer",
            ],
        ),
        // A value the service refuses at start (its own validate()).
        (
            "deploy/k8s/base/config/transformer.env",
            "TRIBUTARY_ACK_WAIT=30s\n",
            "TRIBUTARY_ACK_WAIT=90s\n",
            &[
                "deploy/k8s/base/transformer.yaml",
                "tributary-transformer refuses",
                "--metrics-duplicate-window",
            ],
        ),
        // A value that does not parse.
        (
            "deploy/compose.yaml",
            "TRIBUTARY_SHUTDOWN_GRACE: 10s",
            "TRIBUTARY_SHUTDOWN_GRACE: 10 seconds",
            &["deploy/compose.yaml", "service query-api", "10 seconds"],
        ),
        // The service moved to another port, its probes did not.
        (
            "deploy/k8s/base/config/transformer.env",
            "TRIBUTARY_LISTEN=0.0.0.0:9101\n",
            "TRIBUTARY_LISTEN=0.0.0.0:9111\n",
            &["deploy/k8s/base/transformer.yaml", "9111", "9101"],
        ),
        // Killed before its grace period is over.
        (
            "deploy/k8s/base/sink.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            &["deploy/k8s/base/sink.yaml", "terminationGracePeriodSeconds", "30"],
        ),
        // KEDA watching a consumer nobody creates.
        (
            "deploy/k8s/components/keda/scaledobjects.yaml",
            "consumer: transformer\n",
            "consumer: transformers\n",
            &[
                "deploy/k8s/components/keda/scaledobjects.yaml",
                "transformers",
                "transformer",
            ],
        ),
        // An image no Dockerfile target builds.
        (
            "docker/Dockerfile",
            "FROM runtime AS query-api\n",
            "FROM runtime AS query\n",
            &["tributary-query-api", "query-api"],
        ),
        // A root filesystem left writable.
        (
            "deploy/k8s/base/producer.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            &["deploy/k8s/base/producer.yaml", "readOnlyRootFilesystem"],
        ),
        // A NATS user the server does not have.
        (
            "deploy/k8s/base/secrets.example.yaml",
            "  user: tributary-sink\n",
            "  user: tributary-sinks\n",
            &[
                "deploy/k8s/nats/values.yaml",
                "sink-nats",
                "tributary-sinks",
                "deploy/nats-auth.conf",
            ],
        ),
        // The token file mounted nowhere.
        (
            "deploy/k8s/overlays/prod/auth-tokens.yaml",
            "mountPath: /etc/tributary/auth\n",
            "mountPath: /etc/tributary/tokens\n",
            &["TRIBUTARY_AUTH_TOKENS", "/etc/tributary/auth/tokens.toml"],
        ),
        // Alerter replicas scaled without telling them: a partition would go unevaluated.
        (
            "deploy/k8s/base/alerter.yaml",
            "  replicas: 2\n",
            "  replicas: 3\n",
            &[
                "deploy/k8s/base/alerter.yaml",
                "TRIBUTARY_ALERTER_REPLICAS is 2",
                "runs 3 replica(s)",
            ],
        ),
        // A replica index that is not the pod's stable ordinal.
        (
            "deploy/k8s/base/alerter.yaml",
            "fieldPath: metadata.labels['apps.kubernetes.io/pod-index']",
            "fieldPath: metadata.name",
            &[
                "deploy/k8s/base/alerter.yaml",
                "StatefulSet alerter",
                "apps.kubernetes.io/pod-index",
            ],
        ),
        // Rules the alerter would refuse at start.
        (
            "deploy/k8s/base/config/alert-rules.toml",
            "severity = \"warning\"",
            "severity = \"loud\"",
            &[
                "deploy/k8s/base/config/alert-rules.toml",
                "tributary-alerter refuses",
                "severity",
            ],
        ),
        (
            "deploy/alert-rules.example.toml",
            "severity = \"critical\"",
            "severity = \"urgent\"",
            &[
                "deploy/compose.yaml",
                "service alerter",
                "deploy/alert-rules.example.toml",
                "severity",
            ],
        ),
        // The rules file mounted elsewhere than the alerter reads it.
        (
            "deploy/compose.yaml",
            "        target: /etc/tributary/alert-rules.toml\n",
            "        target: /etc/tributary/rules.toml\n",
            &[
                "deploy/compose.yaml",
                "service alerter",
                "TRIBUTARY_ALERT_RULES=/etc/tributary/alert-rules.toml",
            ],
        ),
        // A second alerter in compose that believes it is alone.
        (
            "deploy/compose.yaml",
            "    configs:\n      - source: alert-rules\n",
            "    deploy:\n      replicas: 2\n    configs:\n      - source: alert-rules\n",
            &["deploy/compose.yaml", "service alerter", "deploy.replicas 2"],
        ),
    ];
    for (file, from, to, expected) in cases {
        let planted = files.replaced(file, from, to);
        let problems = check_all(&planted).join("\n");
        for needle in *expected {
            assert!(
                problems.contains(needle),
                "planting {to:?} in {file}: expected a problem mentioning {needle:?}, got:\n{problems}"
            );
        }
    }
}

/// The health probe the compose file runs in every image.
#[test]
fn the_compose_probe_tells_ready_from_not() {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    let serve = |status: &'static str| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request head: closing with bytes unread would reset
            // the connection under the answer.
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the probe closed before its request was whole");
                request.extend_from_slice(&chunk[..n]);
            }
            assert!(request.starts_with(b"GET /readyz HTTP/1.1\r\n"), "{request:?}");
            let body = r#"{"status":"not_ready","checks":{"nats":false}}"#;
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        address
    };
    assert_eq!(probe::check(serve("200 OK"), "/readyz"), Ok(()));
    let not_ready = probe::check(serve("503 Service Unavailable"), "/readyz").unwrap_err();
    assert!(
        not_ready.contains("503") && not_ready.contains("\"nats\":false"),
        "{not_ready}"
    );
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(probe::check(closed, "/readyz").is_err());
    assert_eq!(probe::address("8080"), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(probe::address("[::1]:9101"), Some("[::1]:9101".parse().unwrap()));
    assert_eq!(probe::address("localhost:1"), None);
}

/// Every check; the problems found, sorted, each naming its file.
fn check_all(files: &Files) -> Vec<String> {
    let services = services();
    let mut problems = Problems::default();
    let dockerfile = docker::check(files, &services, &mut problems);
    compose::check(files, &services, &dockerfile, &mut problems);
    k8s::check(files, &services, &dockerfile, &mut problems);
    problems.list()
}

// ---------------------------------------------------------------- services

/// One Tributary image: its Dockerfile target (the image is
/// `tributary-<target>`), its binary, and the settings its configuration takes.
pub struct Service {
    pub target: &'static str,
    pub binary: String,
    /// Environment variable → the argument that reads it.
    env: BTreeMap<String, clap::Arg>,
    /// Long flag → the argument.
    flags: BTreeMap<String, clap::Arg>,
    /// Parses a command line and runs the configuration's own `validate()`.
    validate: Validator,
}

type Validator = Box<dyn Fn(Vec<String>) -> Result<(), Vec<String>>>;

/// The six images and their configurations.
pub fn services() -> Vec<Service> {
    vec![
        Service::new("producer", validator(producer::Config::validate)),
        Service::new("transformer", validator(transformer::Config::validate)),
        Service::new("sink", validator(sink::Config::validate)),
        Service::new("query-api", validator(query_api::Config::validate)),
        Service::new("alerter", validator(alerter::Config::validate)),
        Service::new("simulator", validator(simulator::Config::validate)),
    ]
}

fn validator<C: clap::Parser + 'static>(validate: fn(&C) -> Result<(), Vec<String>>) -> (clap::Command, Validator) {
    let run = move |args: Vec<String>| {
        let config = C::try_parse_from(args).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        validate(&config)
    };
    (C::command(), Box::new(run))
}

impl Service {
    fn new(target: &'static str, (command, validate): (clap::Command, Validator)) -> Self {
        let mut service = Self {
            target,
            binary: command.get_name().to_owned(),
            env: BTreeMap::new(),
            flags: BTreeMap::new(),
            validate,
        };
        service.collect(&command);
        service
    }

    /// Every argument, through flattened groups (clap merges them into the
    /// command) and any subcommands.
    fn collect(&mut self, command: &clap::Command) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                self.env.insert(env.to_string_lossy().into_owned(), arg.clone());
            }
            if let Some(long) = arg.get_long() {
                self.flags.insert(long.to_owned(), arg.clone());
            }
        }
        for sub in command.get_subcommands() {
            self.collect(sub);
        }
    }

    pub fn image(&self) -> String {
        format!("tributary-{}", self.target)
    }

    /// Why `var` may not be set for this service, if it may not.
    pub fn refuses(&self, var: &str) -> Option<String> {
        match self.env.get(var) {
            None => Some(format!("{var} is not a setting of {}", self.binary)),
            Some(arg) if arg.is_hide_set() => Some(format!(
                "{var} is a hidden setting of {} (a test failpoint), never for a deployment",
                self.binary
            )),
            Some(_) => None,
        }
    }

    /// What the service itself says of the values `env` gives its settings
    /// (parsed as flags, then its `validate()`), less what concerns files
    /// that exist only where it runs (a path the environment names).
    pub fn problems_with(&self, env: &Env) -> Vec<String> {
        let mut args = vec![self.binary.clone()];
        for (var, value) in env {
            let (Some(arg), Some(value)) = (self.env.get(var), value) else {
                continue;
            };
            let Some(long) = arg.get_long() else { continue };
            if arg.get_action().takes_values() {
                args.extend([format!("--{long}"), value.clone()]);
            } else if matches!(value.as_str(), "true" | "1" | "yes" | "on") {
                args.push(format!("--{long}"));
            }
        }
        let paths: Vec<&str> = env
            .values()
            .flatten()
            .map(String::as_str)
            .filter(|v| v.starts_with('/'))
            .collect();
        match (self.validate)(args) {
            Ok(()) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .filter(|p| !paths.iter().any(|path| p.contains(path)))
                .collect(),
        }
    }

    pub fn has_flag(&self, long: &str) -> bool {
        self.flags.contains_key(long)
    }

    /// The value of `--long` for a process given `env` (variable → value,
    /// `None` when set from somewhere this test cannot read): the variable's
    /// value, or else the flag's default. `Err` when it cannot be told.
    pub fn setting(&self, long: &str, env: &Env) -> Result<Option<String>, String> {
        let arg = self
            .flags
            .get(long)
            .unwrap_or_else(|| panic!("{} has no --{long}", self.binary));
        if let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned())
            && let Some(value) = env.get(&var)
        {
            return value
                .clone()
                .map(Some)
                .ok_or_else(|| format!("{var} comes from a secret or the pod: its value cannot be checked"));
        }
        Ok(arg
            .get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`Service::setting`] of the argument that reads `var`.
    pub fn setting_of(&self, var: &str, env: &Env) -> Result<Option<String>, String> {
        let long = self
            .env
            .get(var)
            .and_then(clap::Arg::get_long)
            .ok_or_else(|| format!("{var} is not a setting of {}", self.binary))?;
        self.setting(long, env)
    }

    /// The port it listens on (`--listen`), if it serves HTTP.
    pub fn listen_port(&self, env: &Env) -> Result<Option<u16>, String> {
        if !self.has_flag("listen") {
            return Ok(None);
        }
        let listen = self.setting("listen", env)?.unwrap_or_default();
        listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("TRIBUTARY_LISTEN {listen:?} has no port"))
    }

    /// Its `--shutdown-grace`, if it has one.
    pub fn shutdown_grace(&self, env: &Env) -> Result<Option<Duration>, String> {
        if !self.has_flag("shutdown-grace") {
            return Ok(None);
        }
        let grace = self.setting("shutdown-grace", env)?.unwrap_or_default();
        tributary_runtime::parse_duration(&grace)
            .map(Some)
            .map_err(|e| format!("TRIBUTARY_SHUTDOWN_GRACE: {e}"))
    }

    /// A numeric setting.
    pub fn number(&self, long: &str, env: &Env) -> Result<i64, String> {
        let text = self.setting(long, env)?.unwrap_or_default();
        text.parse().map_err(|_| format!("--{long} {text:?} is not a number"))
    }
}

/// A process's environment: variable → value (`None`: from a Secret or the
/// pod, unreadable here).
pub type Env = BTreeMap<String, Option<String>>;

pub fn service<'a>(services: &'a [Service], target: &str) -> Option<&'a Service> {
    services.iter().find(|s| s.target == target)
}

/// The service an image runs: `…/tributary-<target>[:tag][@digest]`.
pub fn image_target(image: &str) -> Option<&str> {
    let name = image.rsplit('/').next()?;
    let name = name.split('@').next()?;
    let name = name.split(':').next()?;
    name.strip_prefix("tributary-")
}

// ------------------------------------------------------------------- files

/// The deployment files' text, by path relative to the repository's root:
/// read from disk, or with a planted change.
#[derive(Clone)]
pub struct Files {
    texts: BTreeMap<PathBuf, String>,
}

impl Files {
    fn from_disk() -> Self {
        let root = root();
        let mut texts = BTreeMap::new();
        let mut pending = vec![root.join("deploy"), root.join("docker")];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(text) = std::fs::read_to_string(&path) {
                    texts.insert(path.strip_prefix(&root).unwrap().to_path_buf(), text);
                }
            }
        }
        Self { texts }
    }

    /// A copy with `from` replaced by `to` in `file` (which must contain it).
    fn replaced(&self, file: &str, from: &str, to: &str) -> Self {
        let mut copy = self.clone();
        let text = copy
            .texts
            .get_mut(Path::new(file))
            .unwrap_or_else(|| panic!("no {file}"));
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        *text = text.replacen(from, to, 1);
        copy
    }

    pub fn text(&self, path: &Path) -> Option<&str> {
        self.texts.get(path).map(String::as_str)
    }

    pub fn exists(&self, path: &Path) -> bool {
        self.texts.contains_key(path) || self.is_dir(path)
    }

    pub fn is_dir(&self, path: &Path) -> bool {
        self.texts.keys().any(|p| p.starts_with(path) && p != path)
    }

    /// Every file under `dir` whose name ends with one of `extensions`.
    pub fn under<'a>(&'a self, dir: &'a Path, extensions: &'a [&str]) -> impl Iterator<Item = &'a Path> + 'a {
        self.texts
            .keys()
            .filter(move |p| p.starts_with(dir) && extensions.iter().any(|e| p.to_string_lossy().ends_with(e)))
            .map(PathBuf::as_path)
    }

    /// Every YAML document in `path` (anchors expanded, `<<` merge keys applied).
    pub fn yaml(&self, path: &Path, problems: &mut Problems) -> Vec<Value> {
        match self.text(path) {
            Some(text) => yaml_documents(text).unwrap_or_else(|e| {
                problems.at(path, format!("not YAML: {e}"));
                Vec::new()
            }),
            None => {
                problems.at(path, "missing");
                Vec::new()
            }
        }
    }

    /// `KEY=VALUE` lines (`#` comments, blank lines; no quoting), as
    /// kustomize's `envs:` and `deploy/versions.env` have them. With
    /// `inline_comments`, ` #…` after a value is a comment (compose's `.env`).
    pub fn env_file(&self, path: &Path, inline_comments: bool, problems: &mut Problems) -> Vec<(String, String)> {
        let Some(text) = self.text(path) else {
            problems.at(path, "missing");
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                problems.at(path, format!("line {}: not KEY=VALUE", number + 1));
                continue;
            };
            let value = match value.find(" #") {
                Some(at) if inline_comments => &value[..at],
                _ => value,
            };
            pairs.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        pairs
    }

    /// `deploy/versions.env`: the server versions the tests pin.
    pub fn versions(&self, problems: &mut Problems) -> BTreeMap<String, String> {
        self.env_file(Path::new("deploy/versions.env"), false, problems)
            .into_iter()
            .collect()
    }
}

pub fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value = Value::deserialize(document)?;
        value.apply_merge()?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository's root")
}

/// `a/b/../c` → `a/c`, without touching the disk.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ----------------------------------------------------------------- problems

/// Problems found, each once, with where it showed (e.g. which overlays).
#[derive(Default)]
pub struct Problems {
    found: BTreeMap<String, BTreeSet<String>>,
    context: Option<String>,
}

impl Problems {
    pub fn at(&mut self, file: &Path, what: impl Display) {
        let entry = self.found.entry(format!("{}: {what}", file.display())).or_default();
        entry.extend(self.context.clone());
    }

    /// Problems reported from now on showed while building `context`.
    pub fn within(&mut self, context: Option<String>) {
        self.context = context;
    }

    fn list(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|(problem, contexts)| {
                if contexts.is_empty() {
                    problem.clone()
                } else {
                    let contexts: Vec<&str> = contexts.iter().map(String::as_str).collect();
                    format!("{problem} (in {})", contexts.join(", "))
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------- YAML bits

/// The value at a path of mapping keys.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

pub fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path).and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// A scalar as text: strings, numbers and booleans.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn int_at(value: &Value, path: &[&str]) -> Option<i64> {
    at(value, path).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}
