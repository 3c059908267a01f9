//! The assembled output of `deploy/k8s` (`k8s.rs`) against the services'
//! configurations: the variables each container gets (each a setting of its
//! service, and together a configuration its `validate()` takes), the port
//! it listens on wherever it is named (container ports, probes, Services,
//! scrape annotations), its grace period, its security context, the Secrets
//! and files it reads (the alerter's rules parsed as the alerter does), who
//! sets its replica count (the alerter's: fixed, and told to each replica
//! with its ordinal), and what KEDA watches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_yaml::Value;
use tributary_runtime::auth::{Scope, Tokens};

use super::docker::Dockerfile;
use super::k8s::{NatsCluster, Resource, Stack, Templates};
use super::{Env, Problems, Service, at, image_target, int_at, scalar, seq_at, service, str_at};

/// A workload's Tributary container, with what it runs and gets.
struct Container<'a> {
    workload: &'a Resource,
    spec: &'a Value,
    service: &'a Service,
    /// Variable → (value if readable, the file that sets it).
    env: BTreeMap<String, (Option<String>, PathBuf)>,
}

impl Container<'_> {
    fn values(&self) -> Env {
        self.env.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
    }

    fn label(&self) -> String {
        format!(
            "{} {} (container {})",
            self.workload.kind(),
            self.workload.name(),
            str_at(self.spec, &["name"]).unwrap_or_default()
        )
    }
}

pub fn check_stack(
    stack: &Stack,
    services: &[Service],
    dockerfile: &Dockerfile,
    templates: &Templates,
    versions: &BTreeMap<String, String>,
    nats: Option<&NatsCluster>,
    problems: &mut Problems,
) {
    let workloads: Vec<&Resource> = stack
        .resources
        .iter()
        .filter(|r| matches!(r.kind(), "Deployment" | "StatefulSet"))
        .collect();
    let clusters: Vec<&str> = stack
        .resources
        .iter()
        .filter(|r| r.kind() == "Cluster")
        .map(Resource::name)
        .collect();
    let mut containers = Vec::new();
    for workload in &workloads {
        for spec in seq_at(&workload.doc, &["spec", "template", "spec", "containers"]) {
            let image = str_at(spec, &["image"]).unwrap_or_default();
            let Some(target) = image_target(image) else {
                problems.at(
                    &workload.file,
                    format!(
                        "{} {}: image {image:?} is not a Tributary image",
                        workload.kind(),
                        workload.name()
                    ),
                );
                continue;
            };
            let image_name = image.split([':', '@']).next().unwrap_or(image);
            let Some(service) = service(services, target).filter(|_| dockerfile.targets.contains(target)) else {
                problems.at(
                    &workload.file,
                    format!("image {image}: {} has no target `{target}`", super::docker::DOCKERFILE),
                );
                continue;
            };
            if let Some(new_name) = stack.images.get(image_name)
                && image_target(new_name) != Some(target)
            {
                problems.at(
                    &workload.file,
                    format!("image {image} is renamed {new_name}, which is not a tributary-{target} image"),
                );
            }
            let container = resolve(stack, workload, spec, service, problems);
            check_container(stack, &container, templates, &clusters, problems);
            containers.push(container);
        }
    }
    for resource in &stack.resources {
        let file = &resource.file;
        let what = format!("{} {}", resource.kind(), resource.name());
        match resource.kind() {
            "Service" => {
                let picked = picked(&resource.doc, &["spec", "selector"], &workloads);
                if picked.is_empty() {
                    problems.at(file, format!("{what}: its selector picks no workload"));
                }
                for port in seq_at(&resource.doc, &["spec", "ports"]) {
                    let target = port.get("targetPort").or_else(|| port.get("port"));
                    for container in containers
                        .iter()
                        .filter(|c| picked.iter().any(|w| std::ptr::eq(*w, c.workload)))
                    {
                        if let Err(why) = port_matches(container, target) {
                            problems.at(file, format!("{what}: targetPort {why}"));
                        }
                    }
                }
            }
            "PodDisruptionBudget"
                if picked(&resource.doc, &["spec", "selector", "matchLabels"], &workloads).is_empty() =>
            {
                problems.at(file, format!("{what}: its selector picks no workload"));
            }
            "ServiceMonitor" => {
                let services: Vec<&Resource> = stack
                    .resources
                    .iter()
                    .filter(|s| {
                        s.kind() == "Service"
                            && labels_match(
                                &resource.doc,
                                &["spec", "selector", "matchLabels"],
                                &s.doc,
                                &["metadata", "labels"],
                            )
                    })
                    .collect();
                if services.is_empty() {
                    problems.at(file, format!("{what}: its selector picks no Service"));
                }
                for endpoint in seq_at(&resource.doc, &["spec", "endpoints"]) {
                    let port = str_at(endpoint, &["port"]);
                    for service in &services {
                        if !seq_at(&service.doc, &["spec", "ports"])
                            .iter()
                            .any(|p| str_at(p, &["name"]) == port)
                        {
                            problems.at(file, format!("{what}: Service {} has no port {port:?}", service.name()));
                        }
                    }
                }
            }
            "Cluster" => {
                let image = str_at(&resource.doc, &["spec", "imageName"]).unwrap_or_default();
                let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
                let major = versions.get("POSTGRES_MAJOR").map(String::as_str).unwrap_or_default();
                if tag.split(['.', '-']).next() != Some(major) {
                    problems.at(
                        file,
                        format!("{what}: imageName {image:?} is not PostgreSQL {major} (deploy/versions.env)"),
                    );
                }
            }
            _ => {}
        }
    }
    check_scaling(stack, &workloads, &containers, problems);
    if let Some(nats) = nats {
        for container in &containers {
            if container.service.has_flag("stream-replicas")
                && let Ok(Some(replicas)) = container.service.setting("stream-replicas", &container.values())
                && replicas.parse::<u32>().is_ok_and(|r| r > nats.nodes)
            {
                problems.at(
                    &container
                        .env
                        .get("TRIBUTARY_STREAM_REPLICAS")
                        .map_or_else(|| container.workload.file.clone(), |(_, f)| f.clone()),
                    format!(
                        "{}: TRIBUTARY_STREAM_REPLICAS={replicas}, but {} runs {} NATS node(s)",
                        container.label(),
                        nats.file.display(),
                        nats.nodes
                    ),
                );
            }
        }
        for resource in stack.resources.iter().filter(|r| r.kind() == "ScaledObject") {
            for trigger in seq_at(&resource.doc, &["spec", "triggers"])
                .iter()
                .filter(|t| str_at(t, &["type"]) == Some("nats-jetstream"))
            {
                let endpoint = str_at(trigger, &["metadata", "natsServerMonitoringEndpoint"]).unwrap_or_default();
                if endpoint.rsplit(':').next() != Some(nats.monitor_port.to_string().as_str()) {
                    problems.at(
                        &resource.file,
                        format!("ScaledObject {}: natsServerMonitoringEndpoint {endpoint:?} is not the monitoring port {} of {}", resource.name(), nats.monitor_port, nats.file.display()),
                    );
                }
            }
        }
    }
}

/// The container's environment: `envFrom` ConfigMaps of the stack, then `env`.
fn resolve<'a>(
    stack: &Stack,
    workload: &'a Resource,
    spec: &'a Value,
    service: &'a Service,
    problems: &mut Problems,
) -> Container<'a> {
    let mut env = BTreeMap::new();
    for source in seq_at(spec, &["envFrom"]) {
        if let Some(name) = str_at(source, &["configMapRef", "name"]) {
            match stack.config_maps.get(name) {
                Some(entries) => {
                    for (key, (value, file)) in entries {
                        env.insert(key.clone(), (Some(value.clone()), file.clone()));
                    }
                }
                None => problems.at(
                    &workload.file,
                    format!(
                        "{} {}: envFrom ConfigMap {name}, which is not made here",
                        workload.kind(),
                        workload.name()
                    ),
                ),
            }
        } else {
            problems.at(
                &workload.file,
                format!(
                    "{} {}: envFrom other than a generated ConfigMap: this test cannot see its variables",
                    workload.kind(),
                    workload.name()
                ),
            );
        }
    }
    for variable in seq_at(spec, &["env"]) {
        let name = str_at(variable, &["name"]).unwrap_or_default().to_owned();
        let value = variable.get("value").and_then(scalar);
        env.insert(name, (value, workload.file.clone()));
    }
    Container {
        workload,
        spec,
        service,
        env,
    }
}

fn check_container(
    stack: &Stack,
    container: &Container<'_>,
    templates: &Templates,
    clusters: &[&str],
    problems: &mut Problems,
) {
    let label = container.label();
    let service = container.service;
    let workload = &container.workload.doc;
    let file = &container.workload.file;
    let pod = at(workload, &["spec", "template", "spec"]).unwrap_or(&Value::Null);
    let values = container.values();

    // Settings its service has.
    for (var, (_, from)) in container.env.iter().filter(|(v, _)| v.starts_with("TRIBUTARY_")) {
        if let Some(why) = service.refuses(var) {
            problems.at(from, format!("{label}: {why}"));
        }
    }
    for why in service.problems_with(&values) {
        problems.at(
            file,
            format!("{label}: {} refuses this configuration: {why}", service.binary),
        );
    }

    // Its port, everywhere it is named.
    let listen = match service.listen_port(&values) {
        Ok(Some(port)) => port,
        Ok(None) => {
            problems.at(
                file,
                format!("{label}: {} serves no HTTP, so it cannot be probed", service.binary),
            );
            return;
        }
        Err(why) => {
            problems.at(file, format!("{label}: {why}"));
            return;
        }
    };
    for port in seq_at(container.spec, &["ports"]) {
        let number = int_at(port, &["containerPort"]).unwrap_or_default();
        if number != i64::from(listen) {
            problems.at(
                file,
                format!(
                    "{label}: containerPort {number}, but {} listens on {listen}",
                    service.binary
                ),
            );
        }
    }
    for (probe, paths, required) in [
        ("livenessProbe", &["/healthz"][..], true),
        ("readinessProbe", &["/readyz"][..], true),
        ("startupProbe", &["/healthz", "/readyz"][..], false),
    ] {
        let Some(definition) = container.spec.get(probe) else {
            if required {
                problems.at(file, format!("{label}: no {probe}"));
            }
            continue;
        };
        let path = str_at(definition, &["httpGet", "path"]).unwrap_or_default();
        if !paths.contains(&path) {
            problems.at(
                file,
                format!("{label}: {probe} asks {path:?}, expected {}", paths.join(" or ")),
            );
        }
        if let Err(why) = port_matches(container, at(definition, &["httpGet", "port"])) {
            problems.at(file, format!("{label}: {probe} port {why}"));
        }
    }
    if let Some(port) = str_at(
        workload,
        &["spec", "template", "metadata", "annotations", "prometheus.io/port"],
    ) && port.parse::<u16>().ok() != Some(listen)
    {
        problems.at(
            file,
            format!("{label}: prometheus.io/port {port}, but /metrics is on {listen}"),
        );
    }

    // Time to drain: longer than its grace, and the preStop pause before it.
    match service.shutdown_grace(&values) {
        Ok(Some(grace)) => {
            let termination = int_at(pod, &["terminationGracePeriodSeconds"]).unwrap_or(30);
            let pause = int_at(container.spec, &["lifecycle", "preStop", "sleep", "seconds"]).unwrap_or(0);
            let needed = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX) + pause;
            if termination <= needed {
                problems.at(
                    file,
                    format!(
                        "{label}: terminationGracePeriodSeconds {termination} must exceed the shutdown grace \
                         ({}s) plus the preStop pause ({pause}s), or it is killed mid-drain",
                        grace.as_secs()
                    ),
                );
            }
        }
        Ok(None) => {}
        Err(why) => problems.at(file, format!("{label}: {why}")),
    }

    // Least privilege.
    let context = |path: &[&str]| {
        at(container.spec, &[&["securityContext"][..], path].concat())
            .or_else(|| at(pod, &[&["securityContext"][..], path].concat()))
    };
    let expect = |path: &[&str], want: &Value| context(path) == Some(want);
    let mut require = |ok: bool, what: &str| {
        if !ok {
            problems.at(file, format!("{label}: securityContext {what}"));
        }
    };
    require(
        at(container.spec, &["securityContext", "allowPrivilegeEscalation"]) == Some(&Value::Bool(false)),
        "allowPrivilegeEscalation must be false",
    );
    require(
        at(container.spec, &["securityContext", "readOnlyRootFilesystem"]) == Some(&Value::Bool(true)),
        "readOnlyRootFilesystem must be true",
    );
    require(
        seq_at(container.spec, &["securityContext", "capabilities", "drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL")),
        "capabilities must drop ALL",
    );
    require(
        expect(&["runAsNonRoot"], &Value::Bool(true)),
        "runAsNonRoot must be true",
    );
    require(
        context(&["runAsUser"]).and_then(Value::as_i64) != Some(0),
        "runAsUser must not be 0",
    );
    require(
        matches!(
            context(&["seccompProfile", "type"]).and_then(Value::as_str),
            Some("RuntimeDefault" | "Localhost")
        ),
        "seccompProfile must be RuntimeDefault",
    );
    for resource in [["requests", "cpu"], ["requests", "memory"], ["limits", "memory"]] {
        if at(container.spec, &["resources", resource[0], resource[1]]).is_none() {
            problems.at(file, format!("{label}: no resources.{}.{}", resource[0], resource[1]));
        }
    }

    // Secrets it reads: made by CloudNativePG, or templated, with that key.
    let secret_keys = |name: &str| -> Option<BTreeSet<String>> {
        if let Some(template) = templates.get(name) {
            return Some(template.keys().cloned().collect());
        }
        let cnpg = |suffix: &str, keys: &[&str]| {
            clusters
                .iter()
                .any(|c| name == format!("{c}-{suffix}"))
                .then(|| keys.iter().map(|k| (*k).to_owned()).collect())
        };
        cnpg(
            "app",
            &[
                "username", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass", "user",
            ],
        )
        .or_else(|| cnpg("ca", &["ca.crt", "ca.key"]))
    };
    let mut check_secret = |name: &str, key: &str, what: &str| {
        match secret_keys(name) {
        None => problems.at(
            file,
            format!("{label}: {what} reads Secret {name}, which no template (secrets.example.yaml) or database Cluster here makes"),
        ),
        Some(keys) if !keys.contains(key) => {
            problems.at(file, format!("{label}: {what} reads key {key:?} of Secret {name}, which has {keys:?}"))
        }
        Some(_) => {}
    }
    };
    for variable in seq_at(container.spec, &["env"]) {
        if let Some(reference) = at(variable, &["valueFrom", "secretKeyRef"]) {
            check_secret(
                str_at(reference, &["name"]).unwrap_or_default(),
                str_at(reference, &["key"]).unwrap_or_default(),
                str_at(variable, &["name"]).unwrap_or_default(),
            );
        }
    }
    let volumes = seq_at(pod, &["volumes"]);
    for volume in volumes {
        if let Some(secret) = at(volume, &["secret"]) {
            let name = str_at(secret, &["secretName"]).unwrap_or_default();
            for item in seq_at(secret, &["items"]) {
                check_secret(
                    name,
                    str_at(item, &["key"]).unwrap_or_default(),
                    &format!("volume {}", str_at(volume, &["name"]).unwrap_or_default()),
                );
            }
        }
    }

    // A file a setting names is in a mounted volume (and the token file, if
    // templated, holds tokens of the scope this service takes).
    let mounts = seq_at(container.spec, &["volumeMounts"]);
    for mount in mounts {
        let name = str_at(mount, &["name"]);
        if !volumes.iter().any(|v| str_at(v, &["name"]) == name) {
            problems.at(file, format!("{label}: volumeMount {name:?} has no volume"));
        }
    }
    for (var, (value, from)) in &container.env {
        let Some(value) = value.as_deref().filter(|v| v.starts_with('/')) else {
            continue;
        };
        let found = mounts.iter().find_map(|mount| {
            let base = str_at(mount, &["mountPath"])?.trim_end_matches('/');
            let inside = value.strip_prefix(base)?.strip_prefix('/')?;
            let volume = volumes
                .iter()
                .find(|v| str_at(v, &["name"]) == str_at(mount, &["name"]))?;
            Some((inside, volume))
        });
        let Some((inside, volume)) = found else {
            problems.at(from, format!("{label}: {var}={value}, but no volume is mounted there"));
            continue;
        };
        let source = at(volume, &["secret"])
            .map(|s| (str_at(s, &["secretName"]), s))
            .or_else(|| at(volume, &["configMap"]).map(|c| (str_at(c, &["name"]), c)));
        let Some((Some(source_name), source)) = source else {
            continue;
        };
        let items = seq_at(source, &["items"]);
        let key = if items.is_empty() {
            Some(inside)
        } else {
            items
                .iter()
                .find(|i| str_at(i, &["path"]) == Some(inside))
                .and_then(|i| str_at(i, &["key"]))
        };
        let Some(key) = key else {
            problems.at(
                from,
                format!("{label}: {var}={value}, but the volume holds no {inside}"),
            );
            continue;
        };
        // A ConfigMap's file: made here, with that key (and, for the
        // alerter's rules, rules the alerter takes).
        if at(volume, &["configMap"]).is_some() {
            match config_map_entry(stack, source_name, key) {
                None => problems.at(
                    &container.workload.file,
                    format!("{label}: {var}={value}, but ConfigMap {source_name} with a key {key} is not made here"),
                ),
                Some((text, file)) if var == "TRIBUTARY_ALERT_RULES" => {
                    if let Err(why) = tributary_alerts::RuleSet::from_toml(&text) {
                        problems.at(
                            &file,
                            format!("{label}: {} refuses these rules: {}", service.binary, why.join("; ")),
                        );
                    }
                }
                Some(_) => {}
            }
        }
        if var == "TRIBUTARY_AUTH_TOKENS"
            && let Some(text) = templates.get(source_name).and_then(|t| t.get(key))
        {
            let scope = if service.target == "query-api" {
                Scope::Read
            } else {
                Scope::Write
            };
            match Tokens::from_toml(text) {
                Err(why) => problems.at(from, format!("{label}: the template of Secret {source_name} key {key}: {}", why.join("; "))),
                Ok(tokens) if tokens.count(scope) == 0 => problems.at(
                    from,
                    format!("{label}: the template of Secret {source_name} key {key} has no {scope:?} token: {} would refuse everyone", service.binary),
                ),
                Ok(_) => {}
            }
        }
    }

    // An MQTT bridge keeps a persistent session per client id: a stable one
    // per replica, from a StatefulSet pod's name (README, "Several bridges").
    if container.env.contains_key("TRIBUTARY_MQTT_BROKER") {
        let from_pod_name = seq_at(container.spec, &["env"]).iter().any(|v| {
            str_at(v, &["name"]) == Some("TRIBUTARY_MQTT_CLIENT_ID")
                && str_at(v, &["valueFrom", "fieldRef", "fieldPath"]) == Some("metadata.name")
        });
        if container.workload.kind() != "StatefulSet" || !from_pod_name {
            problems.at(
                file,
                format!("{label}: an MQTT bridge must be a StatefulSet whose TRIBUTARY_MQTT_CLIENT_ID is the pod's name (metadata.name)"),
            );
        }
    }

    if service.target == "alerter" {
        check_alerter(stack, container, problems);
    }
}

/// The text of `key` in the ConfigMap `name` of the stack (generated, or a
/// ConfigMap resource), and the file it comes from.
fn config_map_entry(stack: &Stack, name: &str, key: &str) -> Option<(String, PathBuf)> {
    if let Some((text, file)) = stack.config_maps.get(name).and_then(|entries| entries.get(key)) {
        return Some((text.clone(), file.clone()));
    }
    stack
        .resources
        .iter()
        .filter(|r| r.kind() == "ConfigMap" && r.name() == name)
        .find_map(|r| Some((str_at(&r.doc, &["data", key])?.to_owned(), r.file.clone())))
}

/// An alerter replica evaluates the partitions p with p % R == k: k must be
/// the pod's stable ordinal, unique among the running pods (a StatefulSet's
/// `apps.kubernetes.io/pod-index` label), and R the StatefulSet's own
/// replica count, fixed by hand; otherwise some partition has two
/// evaluators (each seeing part of its devices' points) or none.
fn check_alerter(stack: &Stack, container: &Container<'_>, problems: &mut Problems) {
    const POD_INDEX: &str = "metadata.labels['apps.kubernetes.io/pod-index']";
    let label = container.label();
    let workload = container.workload;
    let file = &workload.file;
    let from_pod_index = seq_at(container.spec, &["env"]).iter().any(|v| {
        str_at(v, &["name"]) == Some("TRIBUTARY_ALERTER_REPLICA")
            && str_at(v, &["valueFrom", "fieldRef", "fieldPath"]) == Some(POD_INDEX)
    });
    if workload.kind() != "StatefulSet" || !from_pod_index {
        problems.at(
            file,
            format!("{label}: an alerter must be a StatefulSet whose TRIBUTARY_ALERTER_REPLICA is the pod's ordinal ({POD_INDEX})"),
        );
        return;
    }
    let replicas = int_at(&workload.doc, &["spec", "replicas"]).unwrap_or(1);
    match container.service.setting_of("TRIBUTARY_ALERTER_REPLICAS", &container.values()) {
        Ok(Some(count)) if count.parse::<i64>().ok() == Some(replicas) => {}
        Ok(count) => problems.at(
            file,
            format!(
                "{label}: TRIBUTARY_ALERTER_REPLICAS is {}, but the StatefulSet runs {replicas} replica(s): change both together",
                count.unwrap_or_default()
            ),
        ),
        Err(why) => problems.at(file, format!("{label}: TRIBUTARY_ALERTER_REPLICAS: {why}")),
    }
    for autoscaler in stack.resources.iter().filter(|r| {
        matches!(r.kind(), "HorizontalPodAutoscaler" | "ScaledObject")
            && str_at(&r.doc, &["spec", "scaleTargetRef", "name"]) == Some(workload.name())
    }) {
        problems.at(
            &autoscaler.file,
            format!(
                "{} {}: scales {label}, whose replica count is fixed (TRIBUTARY_ALERTER_REPLICAS)",
                autoscaler.kind(),
                autoscaler.name()
            ),
        );
    }
}

/// A probe's or Service's port (a number, or a container port's name)
/// reaches the port the service listens on.
fn port_matches(container: &Container<'_>, port: Option<&Value>) -> Result<(), String> {
    let listen = container
        .service
        .listen_port(&container.values())
        .ok()
        .flatten()
        .unwrap_or_default();
    let number = match port {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => seq_at(container.spec, &["ports"])
            .iter()
            .find(|p| str_at(p, &["name"]) == Some(name))
            .and_then(|p| int_at(p, &["containerPort"])),
        _ => None,
    };
    match number {
        Some(number) if number == i64::from(listen) => Ok(()),
        Some(number) => Err(format!(
            "{} is {number} in {}, but {} listens on {listen}",
            port.and_then(scalar).unwrap_or_default(),
            container.label(),
            container.service.binary
        )),
        None => Err(format!(
            "{:?} names no port of {}",
            port.and_then(scalar).unwrap_or_default(),
            container.label()
        )),
    }
}

/// The workloads whose pods a selector picks.
fn picked<'a>(doc: &Value, selector: &[&str], workloads: &[&'a Resource]) -> Vec<&'a Resource> {
    workloads
        .iter()
        .copied()
        .filter(|w| labels_match(doc, selector, &w.doc, &["spec", "template", "metadata", "labels"]))
        .collect()
}

fn labels_match(selector_doc: &Value, selector: &[&str], labels_doc: &Value, labels: &[&str]) -> bool {
    let Some(selector) = at(selector_doc, selector).and_then(Value::as_mapping) else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| at(labels_doc, labels).and_then(|l| l.get(k)) == Some(v))
}

/// Who sets each workload's replica count, and what the autoscalers watch.
fn check_scaling(stack: &Stack, workloads: &[&Resource], containers: &[Container<'_>], problems: &mut Problems) {
    let autoscalers: Vec<&Resource> = stack
        .resources
        .iter()
        .filter(|r| matches!(r.kind(), "HorizontalPodAutoscaler" | "ScaledObject"))
        .collect();
    let target_of = |r: &Resource| {
        let reference = at(&r.doc, &["spec", "scaleTargetRef"]);
        let kind = reference
            .and_then(|t| str_at(t, &["kind"]))
            .unwrap_or("Deployment")
            .to_owned();
        let name = reference
            .and_then(|t| str_at(t, &["name"]))
            .unwrap_or_default()
            .to_owned();
        (kind, name)
    };
    for workload in workloads {
        let what = format!("{} {}", workload.kind(), workload.name());
        let scaled_by: Vec<&&Resource> = autoscalers
            .iter()
            .filter(|a| target_of(a) == (workload.kind().to_owned(), workload.name().to_owned()))
            .collect();
        let fixed = at(&workload.doc, &["spec", "replicas"]).is_some();
        match (scaled_by.len(), fixed) {
            (0, false) if workload.kind() == "Deployment" => problems.at(
                &workload.file,
                format!("{what}: nothing sets its replica count (no replicas, no autoscaler)"),
            ),
            (0, _) => {}
            (1, false) => {}
            (1, true) => problems.at(
                &workload.file,
                format!(
                    "{what}: has `replicas` and an autoscaler ({}), which fight",
                    scaled_by[0].kind()
                ),
            ),
            _ => problems.at(
                &workload.file,
                format!("{what}: {} autoscalers drive it", scaled_by.len()),
            ),
        }
    }
    for autoscaler in autoscalers {
        let (kind, name) = target_of(autoscaler);
        let what = format!("{} {}", autoscaler.kind(), autoscaler.name());
        let file = &autoscaler.file;
        if !workloads.iter().any(|w| w.kind() == kind && w.name() == name) {
            problems.at(file, format!("{what}: scales {kind} {name}, which is not here"));
            continue;
        }
        // (A workload whose image is unknown is reported where it is.)
        let Some(container) = containers
            .iter()
            .find(|c| c.workload.kind() == kind && c.workload.name() == name)
        else {
            continue;
        };
        let keda = autoscaler.kind() == "ScaledObject";
        let (min, max) = if keda {
            (
                int_at(&autoscaler.doc, &["spec", "minReplicaCount"]).unwrap_or(0),
                int_at(&autoscaler.doc, &["spec", "maxReplicaCount"]).unwrap_or(100),
            )
        } else {
            (
                int_at(&autoscaler.doc, &["spec", "minReplicas"]).unwrap_or(1),
                int_at(&autoscaler.doc, &["spec", "maxReplicas"]).unwrap_or(0),
            )
        };
        if !(1..=max).contains(&min) {
            problems.at(file, format!("{what}: replicas from {min} to {max}"));
        }
        let cpu = if keda {
            seq_at(&autoscaler.doc, &["spec", "triggers"])
                .iter()
                .any(|t| str_at(t, &["type"]) == Some("cpu"))
        } else {
            seq_at(&autoscaler.doc, &["spec", "metrics"])
                .iter()
                .any(|m| str_at(m, &["resource", "name"]) == Some("cpu"))
        };
        if !cpu {
            problems.at(file, format!("{what}: no CPU target"));
        }
        let service = container.service;
        let values = container.values();
        // The consumer each replica pulls from: the stream it reads, its durable.
        let stream_flag = match service.target {
            "transformer" => Some("raw-stream"),
            "sink" => Some("metrics-stream"),
            _ => None,
        };
        if let Some(stream_flag) = stream_flag {
            let setting = |flag: &str| service.setting(flag, &values).ok().flatten().unwrap_or_default();
            // Every replica may hold a whole pull unacknowledged: more replicas
            // than max-ack-pending / pull would only wait. The pull sizes are
            // the services' (transformer: --batch-size; sink: --batch-size / 10,
            // 1 to 1000, services/sink/src/pipeline.rs).
            let batch = service.number("batch-size", &values).unwrap_or(0);
            let pull = if service.target == "sink" {
                ((batch + 9) / 10).clamp(1, 1000)
            } else {
                batch
            };
            let pending = service.number("max-ack-pending", &values).unwrap_or(0);
            if max * pull > pending {
                problems.at(
                    file,
                    format!(
                        "{what}: {max} replicas × {pull} messages per pull exceed {}'s max-ack-pending {pending}",
                        service.binary
                    ),
                );
            }
            if keda {
                let triggers: Vec<&Value> = seq_at(&autoscaler.doc, &["spec", "triggers"])
                    .iter()
                    .filter(|t| str_at(t, &["type"]) == Some("nats-jetstream"))
                    .collect();
                if triggers.is_empty() {
                    problems.at(
                        file,
                        format!("{what}: no nats-jetstream trigger on {}'s consumer", service.binary),
                    );
                }
                for trigger in triggers {
                    let stream = str_at(trigger, &["metadata", "stream"]).unwrap_or_default();
                    let consumer = str_at(trigger, &["metadata", "consumer"]).unwrap_or_default();
                    let (want_stream, want_consumer) = (setting(stream_flag), setting("durable"));
                    if stream != want_stream || consumer != want_consumer {
                        problems.at(
                            file,
                            format!("{what}: watches stream {stream:?} consumer {consumer:?}, but {} consumes {want_stream:?} with the durable {want_consumer:?}", service.binary),
                        );
                    }
                    if !str_at(trigger, &["metadata", "lagThreshold"])
                        .is_some_and(|t| t.parse::<u64>().is_ok_and(|t| t > 0))
                    {
                        problems.at(
                            file,
                            format!("{what}: lagThreshold must be a positive whole number, as a string"),
                        );
                    }
                }
            }
        } else if keda {
            problems.at(
                file,
                format!("{what}: {} has no durable consumer to scale on", service.binary),
            );
        }
    }
}
