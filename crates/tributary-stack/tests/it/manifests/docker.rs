//! `docker/Dockerfile`: a target per image, each running its service's
//! binary as a non-root user, exposing the port it listens on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Env, Problems, Service};

pub const DOCKERFILE: &str = "docker/Dockerfile";
/// Where the Dockerfile puts the compose health probe.
pub const PROBE: &str = "/usr/local/bin/tributary-probe";

/// What the checks of the other files need to know of the Dockerfile.
pub struct Dockerfile {
    /// Every stage's name (the targets `--target` can build).
    pub targets: BTreeSet<String>,
    /// Whether the image of each target carries the probe.
    pub probe_in: BTreeSet<String>,
}

struct Stage {
    name: Option<String>,
    base: String,
    /// (instruction, arguments), continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

pub fn check(files: &super::Files, services: &[Service], problems: &mut Problems) -> Dockerfile {
    let path = Path::new(DOCKERFILE);
    let stages = parse(files.text(path).unwrap_or_default());
    let targets: BTreeSet<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    let by_name: BTreeMap<&str, &Stage> = stages.iter().filter_map(|s| Some((s.name.as_deref()?, s))).collect();
    // A stage and the stages it is built FROM, nearest first.
    let chain = |stage: &'static str| -> Vec<&Stage> {
        let mut chain = Vec::new();
        let mut next = by_name.get(stage).copied();
        while let Some(stage) = next {
            chain.push(stage);
            next = by_name
                .get(stage.base.as_str())
                .copied()
                .filter(|s| !chain.iter().any(|c| std::ptr::eq(*c, *s)));
        }
        chain
    };
    let mut probe_in = BTreeSet::new();
    let build_text: String = stages
        .iter()
        .flat_map(|s| s.instructions.iter())
        .filter(|(instruction, _)| instruction == "RUN")
        .map(|(_, args)| args.as_str())
        .collect::<Vec<_>>()
        .join("\n");

    for service in services {
        let chain = chain(service.target);
        if chain.is_empty() {
            problems.at(
                path,
                format!("no target `{}` for the image {}", service.target, service.image()),
            );
            continue;
        }
        let last = |instruction: &str| {
            chain
                .iter()
                .find_map(|stage| stage.instructions.iter().rev().find(|(i, _)| i == instruction))
                .map(|(_, args)| args.as_str())
        };
        // The binary it runs: the clap command's name, which is the [[bin]].
        let entrypoint = last("ENTRYPOINT").unwrap_or_default();
        let runs: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_default();
        let binary = runs.first().map(|b| b.rsplit('/').next().unwrap_or(b).to_owned());
        if binary.as_deref() != Some(service.binary.as_str()) {
            problems.at(
                path,
                format!(
                    "target {}: ENTRYPOINT {entrypoint:?} should run {} (exec form)",
                    service.target, service.binary
                ),
            );
        }
        if !build_text.contains(&format!("-p {}", service.target)) || !build_text.contains(&service.binary) {
            problems.at(
                path,
                format!(
                    "target {}: the build does not compile `-p {}` and take out {}",
                    service.target, service.target, service.binary
                ),
            );
        }
        // Non-root, by number (Kubernetes' runAsNonRoot checks the number).
        match last("USER").map(|u| u.split(':').next().unwrap_or_default().trim().to_owned()) {
            Some(uid) if uid.parse::<u32>().is_ok_and(|uid| uid != 0) => {}
            other => problems.at(
                path,
                format!(
                    "target {}: USER {other:?} should be a numeric non-root uid",
                    service.target
                ),
            ),
        }
        // The port it listens on by default, and no other.
        let exposed: BTreeSet<u16> = chain
            .iter()
            .flat_map(|s| s.instructions.iter())
            .filter(|(i, _)| i == "EXPOSE")
            .flat_map(|(_, ports)| {
                ports
                    .split_whitespace()
                    .map(|p| p.split('/').next().unwrap_or(p).to_owned())
            })
            .filter_map(|p| p.parse().ok())
            .collect();
        let listen: BTreeSet<u16> = service.listen_port(&Env::new()).ok().flatten().into_iter().collect();
        if exposed != listen {
            problems.at(
                path,
                format!(
                    "target {}: EXPOSE {exposed:?}, but {} listens on {listen:?} by default",
                    service.target, service.binary
                ),
            );
        }
        // ENV settings are settings of the service.
        for (_, env) in chain
            .iter()
            .flat_map(|s| s.instructions.iter())
            .filter(|(i, _)| i == "ENV")
        {
            for var in env.split_whitespace().filter_map(|kv| kv.split('=').next()) {
                if var.starts_with("TRIBUTARY_")
                    && let Some(why) = service.refuses(var)
                {
                    problems.at(path, format!("target {}: ENV {why}", service.target));
                }
            }
        }
        let copies_probe = chain
            .iter()
            .flat_map(|s| s.instructions.iter())
            .any(|(i, args)| i == "COPY" && args.split_whitespace().last() == Some(super::docker::PROBE));
        if copies_probe {
            probe_in.insert(service.target.to_owned());
        }
    }
    Dockerfile { targets, probe_in }
}

fn parse(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines go, even inside a continued instruction (as Docker does).
        if trimmed.starts_with('#') || (trimmed.is_empty() && logical.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                logical.push_str(part);
                logical.push(' ');
            }
            None => {
                logical.push_str(trimmed);
                lines.push(std::mem::take(&mut logical));
            }
        }
    }
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                name,
                base: words.first().copied().unwrap_or_default().to_owned(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, args));
        }
    }
    stages
}
