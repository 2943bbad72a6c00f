//! The deployment files agree with the code: every variable they set is one
//! the command reads, ports and addresses match, every dependency waits for
//! a healthcheck, the shutdown grace outlasts the shutdown deadline. There
//! is no Docker engine or cluster here: the files are parsed and checked
//! (and `docker compose config` runs where a client is installed; the
//! Kubernetes schemas are checked by `.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use serde::Deserialize;
use serde_json::Value;
use session_enricher::config::Cli;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document in `text`, merge keys (`<<: *anchor`) applied.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| {
            let mut value = serde_norway::Value::deserialize(document).expect("valid YAML");
            value.apply_merge().expect("merge keys apply");
            serde_json::to_value(value).expect("string keys")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// A subcommand's arguments, as clap knows them: variable -> default.
fn variables_of(subcommand: &str) -> BTreeMap<String, Option<String>> {
    let mut cli = Cli::command();
    cli.build();
    let command = cli
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no `{subcommand}` command"));
    command
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((variable, default))
        })
        // Read by the log filter rather than by clap.
        .chain([("RUST_LOG".to_owned(), None)])
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| {
                    let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `"127.0.0.1:9090:9090"` -> the container port, 9090.
fn published_container_ports(service: &Value) -> BTreeSet<u16> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(port_of)
        .collect()
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{duration} is not in seconds"))
}

#[test]
fn the_compose_file_agrees_with_the_code() {
    let compose = yaml_documents(&read("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "postgres",
            "rabbitmq",
            "pbx-simulator",
            "worker",
            "intake",
            "publisher"
        ])
    );
    for (name, service) in services {
        let has_healthcheck = service["healthcheck"]["test"].is_array();
        assert!(
            has_healthcheck || name == "publisher",
            "{name} has no healthcheck"
        );
        for (dependency, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert_eq!(
                condition["condition"], "service_healthy",
                "{name} must wait for {dependency} to be healthy"
            );
            assert!(
                services[dependency]["healthcheck"]["test"].is_array(),
                "{name} waits for {dependency}, which has no healthcheck"
            );
        }
    }

    let worker = &services["worker"];
    let worker_env = environment(worker);
    let run = variables_of("run");
    for variable in worker_env.keys() {
        assert!(
            run.contains_key(variable),
            "the worker sets {variable}, which `run` does not read"
        );
    }
    let default_addr = run["ENRICHER_HTTP_ADDR"].clone().expect("a default");
    assert_eq!(worker_env["ENRICHER_HTTP_ADDR"], default_addr);
    assert!(published_container_ports(worker).contains(&port_of(&default_addr)));
    assert!(
        seconds(worker["stop_grace_period"].as_str().unwrap())
            > worker_env["ENRICHER_SHUTDOWN_TIMEOUT"].parse().unwrap(),
        "docker stop must wait longer than the shutdown deadline"
    );

    let simulator = &services["pbx-simulator"];
    let listen = simulator["command"]
        .as_array()
        .and_then(|c| c.iter().skip_while(|a| *a != "--listen").nth(1))
        .and_then(Value::as_str)
        .expect("the simulator's --listen");
    assert!(
        worker_env["YEASTAR_BASE_URL"].ends_with(&format!("//pbx-simulator:{}", port_of(listen)))
    );
    let simulator_env = environment(simulator);
    let simulate = variables_of("simulate-pbx");
    for (variable, value) in &simulator_env {
        assert!(
            simulate.contains_key(variable),
            "simulate-pbx does not read {variable}"
        );
        if variable.starts_with("YEASTAR_CLIENT") {
            assert_eq!(
                &worker_env[variable], value,
                "worker and simulator disagree on {variable}"
            );
        }
    }

    let postgres = environment(&services["postgres"]);
    assert_eq!(
        worker_env["DATABASE_URL"],
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
        )
    );
    let rabbitmq = environment(&services["rabbitmq"]);
    let amqp_url = format!(
        "amqp://{}:{}@rabbitmq:5672/%2f",
        rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"]
    );
    for name in ["worker", "intake", "publisher"] {
        let env = environment(&services[name]);
        assert_eq!(env["AMQP_URL"], amqp_url, "{name}");
        assert_eq!(env["AMQP_QUEUE"], worker_env["AMQP_QUEUE"], "{name}");
    }

    // The healthchecks call `session-enricher healthcheck` with flags it has.
    let healthcheck: BTreeSet<String> = {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand("healthcheck")
            .expect("a healthcheck command")
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect()
    };
    for name in ["pbx-simulator", "worker", "intake"] {
        let test: Vec<&str> = services[name]["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            &test[..3],
            ["CMD", "/usr/local/bin/session-enricher", "healthcheck"],
            "{name}"
        );
        for flag in test.iter().filter(|a| a.starts_with("--")) {
            assert!(
                healthcheck.contains(*flag),
                "{name}: healthcheck has no {flag}"
            );
        }
    }

    // The intake is built on another branch: check it once it exists.
    let mut cli = Cli::command();
    cli.build();
    if cli.find_subcommand("ingest").is_some() {
        let ingest = variables_of("ingest");
        let intake = &services["intake"];
        for variable in environment(intake).keys() {
            assert!(
                ingest.contains_key(variable),
                "the intake sets {variable}, which `ingest` does not read"
            );
        }
        let listen = &environment(intake)["INGEST_ADDR"];
        assert!(published_container_ports(intake).contains(&port_of(listen)));
    }
}

#[test]
fn the_dockerfile_builds_offline_and_runs_unprivileged_with_a_healthcheck() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| instructions.iter().any(|l| l.starts_with(prefix));
    assert!(dockerfile.contains("SQLX_OFFLINE=true"));
    assert!(has("STOPSIGNAL SIGTERM"));
    assert!(has("USER nonroot"));
    assert!(has("HEALTHCHECK"));
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/session-enricher", "healthcheck"]"#));
    let default_port = port_of(
        &variables_of("run")["ENRICHER_HTTP_ADDR"]
            .clone()
            .expect("a default"),
    );
    assert!(has(&format!("EXPOSE {default_port}")));
    assert_eq!(
        instructions
            .iter()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "a build stage and a run stage"
    );
    // What the build copies exists and is not excluded by .dockerignore.
    let ignore = read(".dockerignore");
    for line in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        // COPY <source>... <destination>
        for source in &words[1..words.len() - 1] {
            assert!(repo_file(source).exists(), "COPY {source}: no such file");
            let allowed = source.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim_start_matches('!').trim_end_matches('/') == allowed),
                ".dockerignore does not let {source} in"
            );
        }
    }
}

#[test]
fn docker_compose_accepts_the_file_where_a_client_is_installed() {
    let file = repo_file("docker-compose.yml");
    let clients: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for client in clients {
        let installed = Command::new(client[0])
            .args(&client[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            continue;
        }
        let output = Command::new(client[0])
            .args(&client[1..])
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"])
            .output()
            .expect("run the compose client");
        assert!(
            output.status.success(),
            "{} config: {}",
            client.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    eprintln!("no docker compose client here: docker-compose.yml checked by parsing only");
}

/// The manifests of `deploy/kubernetes/`, by `Kind/name`.
fn kubernetes_manifests() -> BTreeMap<String, Value> {
    let mut manifests = BTreeMap::new();
    let dir = repo_file("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for manifest in yaml_documents(&text) {
            let key = format!(
                "{}/{}",
                manifest["kind"].as_str().expect("a kind"),
                manifest["metadata"]["name"].as_str().expect("a name")
            );
            assert!(
                manifests.insert(key.clone(), manifest).is_none(),
                "{key} twice"
            );
        }
    }
    manifests
}

#[test]
fn the_kubernetes_manifests_agree_with_the_code() {
    let manifests = kubernetes_manifests();
    let get = |key: &str| {
        manifests
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in deploy/kubernetes/"))
    };
    let run = variables_of("run");
    let config = get("ConfigMap/session-enricher")["data"]
        .as_object()
        .expect("ConfigMap data");
    for variable in config.keys() {
        assert!(
            run.contains_key(variable),
            "the ConfigMap sets {variable}, which `run` does not read"
        );
    }
    let secret = get("Secret/session-enricher")["stringData"]
        .as_object()
        .expect("Secret stringData");

    let deployment = get("Deployment/session-enricher");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "run");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "session-enricher"
    );
    for variable in container["env"].as_array().expect("env") {
        let name = variable["name"].as_str().unwrap();
        let from = &variable["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], "session-enricher");
        assert_eq!(from["key"], name);
        assert!(secret.contains_key(name), "the Secret has no {name}");
        assert!(run.contains_key(name), "`run` does not read {name}");
    }
    for required in [
        "DATABASE_URL",
        "AMQP_URL",
        "YEASTAR_CLIENT_SECRET",
        "YEASTAR_BASE_URL",
        "YEASTAR_CLIENT_ID",
    ] {
        let set_in_config = config.contains_key(required);
        let set_from_secret = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == required);
        assert!(set_in_config || set_from_secret, "{required} is not set");
    }

    let http_port = port_of(config["ENRICHER_HTTP_ADDR"].as_str().unwrap());
    assert_eq!(container["ports"][0]["containerPort"], http_port);
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let shutdown: u64 = config["ENRICHER_SHUTDOWN_TIMEOUT"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > shutdown,
        "the kubelet must wait longer than the shutdown deadline"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    for (kind, resource) in [
        ("requests", "memory"),
        ("requests", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            container["resources"][kind][resource].is_string(),
            "no {kind}.{resource}"
        );
    }

    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &get("PodDisruptionBudget/session-enricher")["spec"]["selector"]["matchLabels"],
    ] {
        for (label, value) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                &pod_labels[label], value,
                "a selector misses the pods on {label}"
            );
        }
    }

    let scaled = &get("ScaledObject/session-enricher")["spec"];
    assert_eq!(
        get("ScaledObject/session-enricher")["apiVersion"],
        "keda.sh/v1alpha1"
    );
    assert_eq!(
        scaled["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let trigger = &scaled["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(
        trigger["metadata"]["protocol"], "http",
        "so unacked messages count"
    );
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    assert_eq!(trigger["metadata"]["queueName"], config["AMQP_QUEUE"]);
    assert!(
        trigger["metadata"]["value"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 0
    );
    let auth_name = trigger["authenticationRef"]["name"].as_str().unwrap();
    let auth = get(&format!("TriggerAuthentication/{auth_name}"));
    assert_eq!(auth["apiVersion"], "keda.sh/v1alpha1");
    let host = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(host["parameter"], "host");
    assert_eq!(host["name"], "session-enricher");
    assert!(secret.contains_key(host["key"].as_str().unwrap()));
    // One PBX access token per replica; the PBX allows 8 per application.
    let max = scaled["maxReplicaCount"].as_u64().unwrap();
    let surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        .as_u64()
        .unwrap();
    assert!(
        max + surge < 8,
        "{max} replicas + {surge} surging would exhaust the PBX's 8 tokens"
    );
    assert!(scaled["minReplicaCount"].as_u64().unwrap() >= 1);
}
