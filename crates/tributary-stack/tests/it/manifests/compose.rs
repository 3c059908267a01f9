//! `deploy/compose.yaml` and `deploy/.env.example`: every Tributary container
//! configured only with settings its service has, probed on the port it
//! listens on, given longer than its shutdown grace to stop, built from a
//! Dockerfile target of its name, with the files its settings name mounted
//! (the alerter's rules parsed as it would), each alerter its own replica
//! index; the servers at the pinned versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use super::docker::{DOCKERFILE, Dockerfile, PROBE};
use super::{Env, Files, Problems, Service, at, image_target, scalar, seq_at, service, str_at};

const COMPOSE: &str = "deploy/compose.yaml";
const ENV_EXAMPLE: &str = "deploy/.env.example";

pub fn check(files: &Files, services: &[Service], dockerfile: &Dockerfile, problems: &mut Problems) {
    let path = Path::new(COMPOSE);
    let Some(text) = files.text(path) else {
        problems.at(path, "missing");
        return;
    };
    // Interpolated with the defaults it gives (`${VAR:-default}`), as with no .env.
    let mut variables = BTreeSet::new();
    let text = interpolate(text, &mut variables, path, problems);
    let documents = super::yaml_documents(&text).unwrap_or_else(|e| {
        problems.at(path, format!("not YAML: {e}"));
        Vec::new()
    });
    let Some(compose) = documents.first() else { return };
    let Some(entries) = at(compose, &["services"]).and_then(Value::as_mapping) else {
        problems.at(path, "no services");
        return;
    };
    let names: BTreeSet<String> = entries.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
    let versions = files.versions(problems);
    let mut listens: BTreeMap<String, u16> = BTreeMap::new();
    // Each alerter service: (name, TRIBUTARY_ALERTER_REPLICA, TRIBUTARY_ALERTER_REPLICAS).
    let mut alerters: Vec<(String, String, String)> = Vec::new();

    for (name, definition) in entries {
        let name = name.as_str().unwrap_or_default();
        let image = str_at(definition, &["image"]).unwrap_or_default();
        let mut problem = |what: String| problems.at(path, format!("service {name}: {what}"));
        if definition.get("restart").is_none() {
            problem("no restart policy".to_owned());
        }
        for dependency in at(definition, &["depends_on"])
            .and_then(Value::as_mapping)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let dependency = dependency.as_str().unwrap_or_default();
            if !names.contains(dependency) {
                problem(format!("depends on {dependency:?}, which is no service here"));
            }
        }
        let Some(service) = image_target(image).and_then(|target| service(services, target)) else {
            check_server(definition, &versions, &mut problem);
            continue;
        };

        // Built from the Dockerfile target of the image's name.
        let build_target = str_at(definition, &["build", "target"]).unwrap_or_default();
        if build_target != service.target || !dockerfile.targets.contains(build_target) {
            problem(format!(
                "image {image} is built from target {build_target:?}: {DOCKERFILE} must have a target `{}`",
                service.target
            ));
        }
        let context = str_at(definition, &["build", "context"]).unwrap_or(".");
        let dockerfile_path = str_at(definition, &["build", "dockerfile"]).unwrap_or("Dockerfile");
        if super::normalize(&Path::new("deploy").join(context).join(dockerfile_path)) != Path::new(DOCKERFILE) {
            problem(format!(
                "build context {context:?} + dockerfile {dockerfile_path:?} is not {DOCKERFILE}"
            ));
        }

        // Settings its service has.
        let env = environment(definition);
        for var in env.keys().filter(|v| v.starts_with("TRIBUTARY_")) {
            if let Some(why) = service.refuses(var) {
                problem(why);
            }
        }
        for why in service.problems_with(&env) {
            problem(format!("{} refuses this configuration: {why}", service.binary));
        }
        // Addresses of other containers.
        for var in [
            "TRIBUTARY_NATS_URL",
            "TRIBUTARY_DATABASE_URL",
            "TRIBUTARY_MQTT_BROKER",
            "TRIBUTARY_SIM_PRODUCER_URL",
            "TRIBUTARY_SIM_MQTT_BROKER",
        ] {
            if let Some(Some(value)) = env.get(var) {
                for host in hosts(value) {
                    if !names.contains(&host) {
                        problem(format!("{var} {value:?}: {host:?} is no service here"));
                    }
                }
            }
        }

        // The least a Tributary container needs.
        if definition.get("read_only").and_then(Value::as_bool) != Some(true) {
            problem("read_only: true is missing (the services write no file)".to_owned());
        }
        if !seq_at(definition, &["cap_drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL"))
        {
            problem("cap_drop: [ALL] is missing".to_owned());
        }
        if !seq_at(definition, &["security_opt"])
            .iter()
            .any(|o| o.as_str().is_some_and(|o| o.starts_with("no-new-privileges")))
        {
            problem("security_opt no-new-privileges is missing".to_owned());
        }

        // A file a setting names is mounted there (and the alerter's rules
        // are rules it takes).
        for (var, value) in env.iter().filter(|(v, _)| v.starts_with("TRIBUTARY_")) {
            let Some(value) = value.as_deref().filter(|v| v.starts_with('/')) else {
                continue;
            };
            match mounted(files, compose, definition, value) {
                Mounted::Nowhere => problem(format!("{var}={value}, but nothing is mounted there")),
                Mounted::File(text, file) if var == "TRIBUTARY_ALERT_RULES" => {
                    if let Err(why) = tributary_alerts::RuleSet::from_toml(&text) {
                        problem(format!(
                            "{var}={value} is {}, whose rules {} refuses: {}",
                            file.display(),
                            service.binary,
                            why.join("; ")
                        ));
                    }
                }
                Mounted::File(..) | Mounted::Unreadable => {}
            }
        }

        // Alerters: each its own replica index (compose cannot give copies of
        // one service different ones).
        if service.target == "alerter" {
            let copies = at(definition, &["deploy", "replicas"]).and_then(scalar);
            if copies.as_deref().is_some_and(|n| n != "1") {
                problem(format!(
                    "deploy.replicas {}: every copy would be the same alerter replica; run one service per replica, each with its own TRIBUTARY_ALERTER_REPLICA",
                    copies.unwrap_or_default()
                ));
            }
            let setting = |var: &str| service.setting_of(var, &env).ok().flatten().unwrap_or_default();
            alerters.push((
                name.to_owned(),
                setting("TRIBUTARY_ALERTER_REPLICA"),
                setting("TRIBUTARY_ALERTER_REPLICAS"),
            ));
        }

        let grace = service.shutdown_grace(&env);
        let stop = definition
            .get("stop_grace_period")
            .and_then(scalar)
            .map_or(Ok(Duration::from_secs(10)), |text| {
                go_duration(&text).ok_or_else(|| format!("stop_grace_period {text:?} is not a duration"))
            });
        match (grace, stop) {
            (Ok(Some(grace)), Ok(stop)) if stop <= grace => problem(format!(
                "stop_grace_period {stop:?} must be longer than its shutdown grace {grace:?}: docker would SIGKILL it mid-drain"
            )),
            (Err(why), _) | (_, Err(why)) => problem(why),
            _ => {}
        }

        let listen = match service.listen_port(&env) {
            Ok(port) => port,
            Err(why) => {
                problem(why);
                continue;
            }
        };
        let healthcheck = definition.get("healthcheck");
        match listen {
            Some(port) => {
                listens.insert(name.to_owned(), port);
                // tributary-probe ADDRESS /readyz, the probe the image carries.
                let test: Vec<String> = healthcheck
                    .map(|h| seq_at(h, &["test"]))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(scalar)
                    .collect();
                let probed = match test.as_slice() {
                    [cmd, probe, address, readyz] if cmd == "CMD" && probe == PROBE && readyz == "/readyz" => {
                        super::probe::address(address).map(|a| a.port())
                    }
                    _ => None,
                };
                if probed != Some(port) {
                    problem(format!(
                        "healthcheck {test:?} should be [\"CMD\", \"{PROBE}\", \"127.0.0.1:{port}\", \"/readyz\"]: \
                         {} listens on {port}",
                        service.binary
                    ));
                }
                if !dockerfile.probe_in.contains(service.target) {
                    problem(format!("its image (target {}) has no {PROBE}", service.target));
                }
                for mapping in seq_at(definition, &["ports"]).iter().filter_map(scalar) {
                    let container = mapping.rsplit(':').next().unwrap_or_default();
                    let container = container.split('/').next().unwrap_or_default();
                    if container.parse::<u16>().ok() != Some(port) {
                        problem(format!(
                            "publishes {mapping:?}, but {} listens on {port}",
                            service.binary
                        ));
                    }
                }
            }
            None => {
                // Serves no HTTP (the simulator): say so rather than forget it.
                if healthcheck.and_then(|h| h.get("disable")).and_then(Value::as_bool) != Some(true) {
                    problem(format!(
                        "{} serves no HTTP: set `healthcheck: disable: true` to say so",
                        service.binary
                    ));
                }
            }
        }
    }

    // The alerters split the partitions: replicas 0 to N - 1 of N.
    let count = alerters.len().to_string();
    let mut indexes: Vec<&str> = alerters.iter().map(|(_, index, _)| index.as_str()).collect();
    indexes.sort_unstable();
    indexes.dedup();
    for (name, index, replicas) in &alerters {
        let valid = index.parse::<usize>().is_ok_and(|i| i < alerters.len());
        if replicas != &count || !valid || indexes.len() != alerters.len() {
            problems.at(
                path,
                format!(
                    "service {name}: TRIBUTARY_ALERTER_REPLICA {index} of TRIBUTARY_ALERTER_REPLICAS {replicas}, \
                     but {count} alerter service(s) here: each needs its own index below {count}, and the count {count}"
                ),
            );
        }
    }

    // The simulators post to the producer's port.
    for (name, definition) in entries {
        let env = environment(definition);
        if let Some(Some(url)) = env.get("TRIBUTARY_SIM_PRODUCER_URL") {
            for host in hosts(url) {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
                if let Some(listen) = listens.get(&host)
                    && port != Some(*listen)
                {
                    problems.at(
                        path,
                        format!(
                            "service {}: TRIBUTARY_SIM_PRODUCER_URL {url:?}, but {host} listens on {listen}",
                            name.as_str().unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }

    // Every compose configs file exists.
    for (name, config) in at(compose, &["configs"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if let Some(file) = str_at(config, &["file"])
            && !files.exists(&super::normalize(&Path::new("deploy").join(file)))
        {
            problems.at(path, format!("config {name:?}: no file {file}"));
        }
    }

    check_env_example(files, services, &variables, problems);
}

/// What a container finds at a path.
enum Mounted {
    /// A file this test can read: its text and where it comes from.
    File(String, PathBuf),
    /// Something is mounted there (a named volume, a file elsewhere).
    Unreadable,
    Nowhere,
}

/// What `definition`'s `configs` and `volumes` put at `path`.
fn mounted(files: &Files, compose: &Value, definition: &Value, path: &str) -> Mounted {
    let deploy = Path::new("deploy");
    let read = |file: &str| {
        let file = super::normalize(&deploy.join(file));
        match files.text(&file) {
            Some(text) => Mounted::File(text.to_owned(), file),
            None => Mounted::Unreadable,
        }
    };
    for config in seq_at(definition, &["configs"]) {
        let (source, target) = match config {
            Value::String(source) => (source.as_str(), format!("/{source}")),
            _ => (
                str_at(config, &["source"]).unwrap_or_default(),
                str_at(config, &["target"]).map_or_else(
                    || format!("/{}", str_at(config, &["source"]).unwrap_or_default()),
                    str::to_owned,
                ),
            ),
        };
        if target != path {
            continue;
        }
        let Some(top) = at(compose, &["configs", source]) else {
            return Mounted::Nowhere;
        };
        return match (str_at(top, &["file"]), str_at(top, &["content"])) {
            (Some(file), _) => read(file),
            (None, Some(content)) => Mounted::File(content.to_owned(), PathBuf::from(COMPOSE)),
            (None, None) => Mounted::Unreadable,
        };
    }
    for volume in seq_at(definition, &["volumes"]) {
        let (source, target) = match volume {
            Value::String(spec) => {
                let mut parts = spec.split(':');
                (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
            }
            _ => (
                str_at(volume, &["source"]).unwrap_or_default(),
                str_at(volume, &["target"]).unwrap_or_default(),
            ),
        };
        let target = target.trim_end_matches('/');
        let inside = match path.strip_prefix(target) {
            Some("") => Some(""),
            Some(rest) => rest.strip_prefix('/'),
            None => None,
        };
        let Some(inside) = inside else { continue };
        // A bind mount of this repository's files, or a named volume.
        return if source.starts_with('.') {
            read(&Path::new(source).join(inside).to_string_lossy())
        } else {
            Mounted::Unreadable
        };
    }
    Mounted::Nowhere
}

/// nats, postgres and mosquitto: the versions the tests run against, and a health check.
fn check_server(definition: &Value, versions: &BTreeMap<String, String>, problem: &mut impl FnMut(String)) {
    let image = str_at(definition, &["image"]).unwrap_or_default();
    let (repository, tag) = image.rsplit_once(':').unwrap_or((image, ""));
    let pinned = match repository.rsplit('/').next().unwrap_or_default() {
        "nats" => versions.get("NATS_SERVER_VERSION").map(|v| ("NATS_SERVER_VERSION", v)),
        "postgres" => versions.get("POSTGRES_MAJOR").map(|v| ("POSTGRES_MAJOR", v)),
        "eclipse-mosquitto" => versions.get("MOSQUITTO_MAJOR").map(|v| ("MOSQUITTO_MAJOR", v)),
        _ => {
            problem(format!(
                "image {image:?} is neither a Tributary image nor a known server"
            ));
            None
        }
    };
    if let Some((key, version)) = pinned {
        // 2.12.8-alpine for 2.12.8; 15 or 15.4 for 15.
        let matches = tag == version.as_str()
            || tag.starts_with(&format!("{version}-"))
            || tag.starts_with(&format!("{version}."));
        if !matches {
            problem(format!(
                "image {image} is not the version deploy/versions.env pins ({key}={version})"
            ));
        }
    }
    if definition.get("healthcheck").and_then(|h| h.get("test")).is_none() {
        problem("no healthcheck".to_owned());
    }
}

/// Its `environment`, as a map or as a list of `KEY=VALUE`.
fn environment(definition: &Value) -> Env {
    let mut env = Env::new();
    match definition.get("environment") {
        Some(Value::Mapping(map)) => {
            for (key, value) in map {
                env.insert(key.as_str().unwrap_or_default().to_owned(), scalar(value));
            }
        }
        Some(Value::Sequence(list)) => {
            for item in list.iter().filter_map(Value::as_str) {
                let (key, value) = item.split_once('=').unwrap_or((item, ""));
                env.insert(key.to_owned(), Some(value.to_owned()));
            }
        }
        _ => {}
    }
    env
}

/// The hosts in a comma-separated list of URLs or `host:port`s.
fn hosts(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|item| {
            let rest = item.split_once("://").map_or(item, |(_, rest)| rest);
            let authority = rest.split('/').next()?;
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            Some(host_port.rsplit_once(':').map_or(host_port, |(h, _)| h).to_owned())
        })
        .collect()
}

/// Compose's interpolation with the defaults given: `${VAR:-default}`,
/// `${VAR-default}`, `${VAR}` (empty), `$$` (a `$`). A `TRIBUTARY_*`
/// variable may only feed the setting of its own name.
fn interpolate(text: &str, variables: &mut BTreeSet<String>, path: &Path, problems: &mut Problems) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        // YAML comments may mention ${…} freely.
        let content = match line.trim_start().starts_with('#') {
            true => "",
            false => line,
        };
        let key = content.trim_start().split(':').next().unwrap_or_default().trim();
        let mut rest = content;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                out.push('$');
                rest = after;
            } else if let Some(inner) = rest.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    problems.at(path, format!("unclosed ${{ in {line:?}"));
                    break;
                };
                let expression = &inner[..end];
                let (name, default) = match expression.split_once(":-").or_else(|| expression.split_once('-')) {
                    Some((name, default)) => (name, default),
                    None => (expression, ""),
                };
                if name.starts_with("TRIBUTARY_") && name != key {
                    problems.at(
                        path,
                        format!("${{{name}}} feeds {key}: a TRIBUTARY_* variable may only set the setting of its name"),
                    );
                }
                variables.insert(name.to_owned());
                out.push_str(default);
                rest = &inner[end + 1..];
            } else {
                problems.at(path, format!("write ${{VAR}}, not $VAR, in {line:?}"));
                out.push('$');
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// `.env.example` lists every variable compose.yaml reads, and no other; its
/// TRIBUTARY_* names are settings of a service.
fn check_env_example(files: &Files, services: &[Service], used: &BTreeSet<String>, problems: &mut Problems) {
    let path = Path::new(ENV_EXAMPLE);
    let listed: BTreeSet<String> = files
        .env_file(path, true, problems)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    for variable in used.difference(&listed) {
        problems.at(path, format!("{variable} (read by {COMPOSE}) is not listed"));
    }
    for variable in listed.difference(used) {
        problems.at(path, format!("{variable} is not read by {COMPOSE}"));
    }
    for variable in listed.iter().filter(|v| v.starts_with("TRIBUTARY_")) {
        if services.iter().all(|s| s.refuses(variable).is_some()) {
            problems.at(path, format!("{variable} is a setting of no service"));
        }
    }
}

/// Go's duration syntax, as compose takes it (`1m30s`, `45s`, `500ms`).
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = &rest[unit_end..];
    }
    Some(total)
}

#[test]
fn compose_durations() {
    assert_eq!(go_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(go_duration("30"), None);
    assert_eq!(go_duration(""), None);
}
