//! What can be checked of `deploy/` without Docker or a cluster: every file parses; dashboards
//! and alert rules query only metrics Pulse emits; compose and Kubernetes set only settings the
//! binary reads, with values it accepts, and agree with each other on ports, paths and names.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::ValueEnum;
use pulse::Role;
use pulse_shared::{Settings, metrics::NAMES, telemetry};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let mut v: Yaml = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel} does not parse: {e}"));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(v, |v, k| &v[*k])
}

fn text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The metric names a PromQL expression uses (identifiers starting with `pulse_`), and `up`.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            // A label value in quotes is not a metric.
            let quoted = start > 0 && bytes[start - 1] == '"';
            if word.starts_with("pulse_") && !quoted {
                found.push(word);
            }
        } else {
            i += 1;
        }
    }
    found
}

/// Whether `name` is a sample of a family Pulse emits.
fn emitted(name: &str) -> bool {
    NAMES.contains(&name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| NAMES.contains(&family))
            })
}

fn assert_queries_emitted(what: &str, expr: &str) {
    let names = metrics_in(expr);
    assert!(
        !names.is_empty() || expr.contains("up{"),
        "{what}: `{expr}` queries no Pulse metric"
    );
    for name in names {
        assert!(
            emitted(&name),
            "{what}: `{name}` is not a metric Pulse emits"
        );
    }
}

/// The `PULSE_*` variables the binary reads.
fn known_vars() -> BTreeSet<String> {
    let seen = RefCell::new(BTreeSet::new());
    Settings::from_lookup(|k| {
        seen.borrow_mut().insert(k.to_owned());
        None
    })
    .unwrap_or_else(|e| panic!("defaults: {e}"));
    let mut vars = seen.into_inner();
    vars.extend(telemetry::ENV_VARS.iter().map(|v| v.to_string()));
    vars
}

/// Checks an environment the way the binary would read it: every `PULSE_*` name is one it
/// reads, and the settings it makes are valid. Returns them.
fn settings_from(what: &str, env: &BTreeMap<String, String>) -> Settings {
    let known = known_vars();
    for k in env.keys().filter(|k| k.starts_with("PULSE_")) {
        assert!(
            known.contains(k),
            "{what} sets {k}, which Pulse does not read"
        );
    }
    Settings::from_lookup(|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{what}: the binary refuses this environment: {e}"))
}

fn env_map(v: &Yaml) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// `pulse serve ROLE…` or `pulse migrate`, as the binary's CLI would accept it.
fn assert_pulse_command(what: &str, args: &[String]) {
    match args.first().map(String::as_str) {
        Some("migrate") => assert_eq!(args.len(), 1, "{what}: {args:?}"),
        Some("serve") => {
            for role in &args[1..] {
                assert!(
                    Role::from_str(role, false).is_ok(),
                    "{what}: `{role}` is not a role"
                );
            }
        }
        _ => panic!("{what}: `pulse {args:?}` is not a command"),
    }
}

fn args_of(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default()
}

fn port_of(settings: &Settings) -> u16 {
    settings.http_addr.port()
}

#[test]
fn dashboards_parse_and_query_only_what_pulse_emits() {
    let datasource = &yaml_docs("deploy/compose/grafana/datasources.yaml")[0];
    let uid = text(
        s(datasource, &["datasources"])[0]
            .get("uid")
            .unwrap_or(&Yaml::Null),
    );
    let mut uids = BTreeSet::new();
    let mut dir: Vec<_> = std::fs::read_dir(repo().join("deploy/grafana"))
        .unwrap_or_else(|e| panic!("deploy/grafana: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    dir.sort();
    for path in dir {
        let name = path.display().to_string();
        let d: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        assert!(
            uids.insert(d["uid"].as_str().unwrap_or_default().to_owned()),
            "{name}: uid"
        );
        // The data source is a variable (any Prometheus, whatever its uid), whose default is
        // the one the compose setup provisions.
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"
                && v["current"]["value"].as_str() == Some(uid.as_str())),
            "{name}: no datasource variable defaulting to {uid}"
        );
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{name} has no panels");
        for p in panels {
            let what = format!("{name}: {}", p["title"]);
            assert_eq!(
                p["datasource"]["uid"].as_str(),
                Some("${datasource}"),
                "{what}"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{what} has no query");
            for t in targets {
                assert_queries_emitted(&what, t["expr"].as_str().unwrap_or_default());
            }
        }
    }
    for wanted in [
        "pulse-overview",
        "pulse-roles",
        "pulse-sends",
        "pulse-backlog",
        "pulse-queue",
    ] {
        assert!(uids.contains(wanted), "dashboard {wanted} is missing");
    }
}

#[test]
fn alert_rules_parse_and_cover_what_must_page_someone() {
    let doc = &yaml_docs("deploy/prometheus/alerts.yml")[0];
    let mut alerts = BTreeMap::new();
    for group in s(doc, &["groups"]).as_sequence().into_iter().flatten() {
        for rule in s(group, &["rules"]).as_sequence().into_iter().flatten() {
            let name = text(&rule["alert"]);
            let expr = text(&rule["expr"]);
            assert_queries_emitted(&name, &expr);
            // The Operator names jobs `<namespace>/<podmonitor>`, compose `pulse`: a rule keyed
            // on `job` is silent on one of them. Rules match `role`, which both set.
            assert!(!expr.contains("job="), "{name} matches on job: `{expr}`");
            let severity = text(s(rule, &["labels", "severity"]));
            assert!(
                ["warning", "critical"].contains(&severity.as_str()),
                "{name}"
            );
            assert!(
                !text(s(rule, &["annotations", "summary"])).is_empty(),
                "{name}"
            );
            alerts.insert(name, expr);
        }
    }
    for (alert, metric) in [
        ("PulseBacklogGrowing", "pulse_backlog_oldest_age_seconds"),
        ("PulseSendFailuresRising", "pulse_sender_sends_total"),
        ("PulseUnknownSends", "pulse_unknown_sends_outstanding"),
        (
            "PulsePausedSequenceSending",
            "pulse_paused_sequence_sends_total",
        ),
        ("PulseBacklogStalled", "pulse_backlog_oldest_age_seconds"),
        ("PulseBacklogNotReported", "pulse_backlog_steps"),
        ("PulseRoleNotReady", "pulse_ready"),
    ] {
        let expr = alerts
            .get(alert)
            .unwrap_or_else(|| panic!("alert {alert} is missing"));
        assert!(expr.contains(metric), "{alert} should watch {metric}");
    }
}

#[test]
fn compose_runs_every_part_with_settings_the_binary_accepts() {
    let doc = &yaml_docs("deploy/compose/compose.yaml")[0];
    let services = s(doc, &["services"])
        .as_mapping()
        .unwrap_or_else(|| panic!("compose has no services"));
    let names: BTreeSet<String> = services.keys().map(text).collect();
    for wanted in [
        "postgres",
        "rabbitmq",
        "redis",
        "mailpit",
        "otel-collector",
        "prometheus",
        "grafana",
        "migrate",
        "api",
        "scheduler",
        "sender",
        "inbound",
    ] {
        assert!(names.contains(wanted), "compose lacks {wanted}");
    }
    let mut pulse_port = None;
    for (name, svc) in services {
        let name = text(name);
        // Every file mounted from the repository exists.
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let source = text(volume);
            if source.starts_with('.') {
                let rel = source.split(':').next().unwrap_or_default();
                let path = repo().join("deploy/compose").join(rel);
                assert!(path.exists(), "{name} mounts {rel}, which does not exist");
            }
        }
        if text(&svc["image"]) != "pulse:local" {
            continue;
        }
        let what = format!("compose service {name}");
        assert_pulse_command(&what, &args_of(&svc["command"]));
        let settings = settings_from(&what, &env_map(&svc["environment"]));
        assert!(
            settings.smtp_url.is_some(),
            "{what} would send to the dev outbox"
        );
        let host = |url: &str| {
            url.split("//")
                .nth(1)
                .and_then(|r| r.rsplit('@').next())
                .and_then(|r| r.split([':', '/']).next())
                .unwrap_or_default()
                .to_owned()
        };
        for url in [
            &settings.database_url,
            &settings.amqp_url,
            &settings.redis_url,
        ] {
            assert!(names.contains(&host(url)), "{what}: {url} names no service");
        }
        pulse_port = Some(port_of(&settings));
    }
    let port = pulse_port.unwrap_or_else(|| panic!("no Pulse role in compose"));

    // Prometheus scrapes the roles on that port, and loads the alert rules mounted for it.
    let prom = &yaml_docs("deploy/compose/prometheus.yml")[0];
    let job = &s(prom, &["scrape_configs"])[0];
    let sd = &s(job, &["dns_sd_configs"])[0];
    assert_eq!(text(&sd["port"]), port.to_string());
    for target in sd["names"].as_sequence().into_iter().flatten() {
        assert!(
            names.contains(&text(target)),
            "Prometheus scrapes {target:?}"
        );
    }
    assert_eq!(
        text(&job["job_name"]),
        "pulse",
        "the alert on `up` expects job=pulse"
    );
    assert_eq!(
        text(&s(prom, &["rule_files"])[0]),
        "/etc/prometheus/alerts.yml"
    );

    // Grafana loads the dashboards from where they are mounted.
    let provider = &yaml_docs("deploy/compose/grafana/dashboards.yaml")[0];
    let path = text(&s(provider, &["providers"])[0]["options"]["path"]);
    let grafana = &services[&Yaml::from("grafana")];
    let mounted = grafana["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(text)
        .any(|v| v == format!("../grafana:{path}:ro"));
    assert!(
        mounted,
        "Grafana's dashboard folder {path} is not the mounted deploy/grafana"
    );
}

#[test]
fn kubernetes_manifests_are_complete_and_honoured_by_the_binary() {
    let kustomization = &yaml_docs("deploy/k8s/base/kustomization.yaml")[0];
    let mut docs = Vec::new();
    for r in s(kustomization, &["resources"])
        .as_sequence()
        .into_iter()
        .flatten()
    {
        docs.extend(yaml_docs(&format!("deploy/k8s/base/{}", text(r))));
    }
    let production = &yaml_docs("deploy/k8s/production/kustomization.yaml")[0];
    for r in s(production, &["resources"])
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let r = text(r);
        let path = repo().join("deploy/k8s/production").join(&r);
        assert!(path.exists(), "production lists {r}, which does not exist");
        if path.is_file() {
            yaml_docs(&format!("deploy/k8s/production/{r}"));
        }
    }
    let of_kind =
        |kind: &str| -> Vec<&Yaml> { docs.iter().filter(|d| text(&d["kind"]) == kind).collect() };
    let mut env = BTreeMap::new();
    for cm in of_kind("ConfigMap") {
        env.extend(env_map(&cm["data"]));
    }
    for secret in of_kind("Secret") {
        env.extend(env_map(&secret["stringData"]));
    }
    let settings = settings_from("the ConfigMap and Secret", &env);
    assert_eq!(
        settings.queue_type,
        pulse_shared::messaging::QueueType::Quorum,
        "production uses quorum queues"
    );
    let port = port_of(&settings);
    // The worst-case send: four SMTP phases of the timeout, then recording the outcome.
    let worst_send = 4 * settings.sender.smtp_timeout.as_secs() + 30;

    let mut deployments = BTreeMap::new();
    for d in of_kind("Deployment") {
        let name = text(s(d, &["metadata", "name"]));
        let pod = s(d, &["spec", "template"]);
        let labels = s(pod, &["metadata", "labels"]);
        assert_eq!(
            s(d, &["spec", "selector", "matchLabels"])
                .as_mapping()
                .into_iter()
                .flatten()
                .filter(|(k, v)| labels[*k] != **v)
                .count(),
            0,
            "{name}: the selector does not match the pod labels"
        );
        let annotations = s(pod, &["metadata", "annotations"]);
        assert_eq!(
            text(&annotations["prometheus.io/port"]),
            port.to_string(),
            "{name}"
        );
        assert_eq!(
            text(&annotations["prometheus.io/path"]),
            "/metrics",
            "{name}"
        );
        let spec = s(pod, &["spec"]);
        let container = &spec["containers"][0];
        assert_pulse_command(&name, &args_of(&container["args"]));
        let ports = &container["ports"][0];
        assert_eq!(text(&ports["containerPort"]), port.to_string(), "{name}");
        assert_eq!(text(&ports["name"]), "http", "{name}");
        assert_eq!(
            text(s(container, &["livenessProbe", "httpGet", "path"])),
            "/healthz"
        );
        assert_eq!(
            text(s(container, &["readinessProbe", "httpGet", "path"])),
            "/readyz"
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(
                text(s(container, &[probe, "httpGet", "port"])),
                "http",
                "{name}"
            );
        }
        assert!(
            !s(container, &["resources", "requests", "memory"]).is_null(),
            "{name}"
        );
        let sources: Vec<String> = container["envFrom"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                ["configMapRef", "secretRef"]
                    .iter()
                    .find_map(|k| e.get(*k).map(|r| text(&r["name"])))
            })
            .collect();
        assert!(sources.contains(&"pulse-config".to_owned()), "{name}");
        assert!(sources.contains(&"pulse-secrets".to_owned()), "{name}");
        let grace: u64 = text(&spec["terminationGracePeriodSeconds"])
            .parse()
            .unwrap_or(30);
        if args_of(&container["args"]).contains(&"sender".to_owned()) {
            assert!(
                grace >= worst_send,
                "{name}: {grace}s of grace is shorter than a worst-case send ({worst_send}s)"
            );
        }
        deployments.insert(name, labels.clone());
    }
    for role in [
        "pulse-api",
        "pulse-scheduler",
        "pulse-sender",
        "pulse-inbound",
    ] {
        assert!(deployments.contains_key(role), "no Deployment {role}");
    }
    // Every Deployment has a disruption budget selecting its pods.
    for (name, labels) in &deployments {
        let covered = of_kind("PodDisruptionBudget").iter().any(|pdb| {
            s(pdb, &["spec", "selector", "matchLabels"])
                .as_mapping()
                .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))
        });
        assert!(covered, "{name} has no PodDisruptionBudget");
    }
    // Migrations run as a Job, with the same configuration.
    let job = of_kind("Job");
    assert_eq!(job.len(), 1);
    let container = &s(job[0], &["spec", "template", "spec", "containers"])[0];
    assert_eq!(args_of(&container["args"]), vec!["migrate".to_owned()]);
    assert!(
        !settings.migrate_on_start,
        "roles must leave migrations to the Job"
    );
    // Senders scale on the backlog of the queue they consume.
    let scaled = of_kind("ScaledObject");
    assert_eq!(scaled.len(), 1);
    let target = text(s(scaled[0], &["spec", "scaleTargetRef", "name"]));
    assert!(deployments.contains_key(&target), "KEDA scales {target}");
    let trigger = &s(scaled[0], &["spec", "triggers"])[0];
    assert_eq!(text(&trigger["type"]), "rabbitmq");
    assert_eq!(text(s(trigger, &["metadata", "queueName"])), settings.queue);
}

#[test]
fn the_dockerfile_builds_the_pulse_binary_and_listens_where_probes_look() {
    let dockerfile = read("deploy/docker/Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked -p pulse"));
    assert!(dockerfile.contains("ENTRYPOINT [\"pulse\"]"));
    let addr = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV PULSE_HTTP_ADDR="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let env = BTreeMap::from([("PULSE_HTTP_ADDR".to_owned(), addr)]);
    let settings = settings_from("the Dockerfile", &env);
    assert!(
        settings.http_addr.ip().is_unspecified(),
        "listen on every interface"
    );
    assert!(dockerfile.contains(&format!("EXPOSE {}", settings.http_addr.port())));
}

/// Prometheus's own checker: `PULSE_TEST_PROMTOOL`, else `target/tools/promtool` (which
/// `make test` puts there, see deploy/local/promtool.sh), else `promtool` on PATH.
fn promtool() -> PathBuf {
    if let Ok(p) = std::env::var("PULSE_TEST_PROMTOOL") {
        return p.into();
    }
    let local = repo().join("target/tools/promtool");
    if local.exists() {
        return local;
    }
    "promtool".into()
}

fn run_promtool(args: &[&str]) {
    let tool = promtool();
    let out = std::process::Command::new(&tool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} cannot run ({e}): run deploy/local/promtool.sh (make test does)",
                tool.display()
            )
        });
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_the_config_and_every_dashboard_query_and_the_alerts_fire() {
    run_promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    // Each alert fires on the series it exists for and stays quiet on healthy ones.
    run_promtool(&["test", "rules", "deploy/prometheus/alerts.test.yml"]);
    let dir = std::env::temp_dir().join(format!("pulse-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    // The compose Prometheus configuration, with its rule file where it is in the repository.
    let config = read("deploy/compose/prometheus.yml").replace(
        "/etc/prometheus/alerts.yml",
        &repo()
            .join("deploy/prometheus/alerts.yml")
            .display()
            .to_string(),
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
    run_promtool(&["check", "config", &config_path.display().to_string()]);
    // Every dashboard query, as a recording rule, so promtool parses it as PromQL.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("deploy/grafana"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let d: Json =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap_or_default())
                .unwrap_or_default();
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = serde_json::to_string(t["expr"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                rules.push_str(&format!(
                    "      - record: dashboard:query{n}\n        expr: {expr}\n"
                ));
                n += 1;
            }
        }
    }
    assert!(n > 30, "only {n} dashboard queries found");
    let rules_path = dir.join("dashboards.yml");
    std::fs::write(&rules_path, rules).unwrap_or_else(|e| panic!("{e}"));
    run_promtool(&["check", "rules", &rules_path.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_metric_scanner_finds_metrics_and_skips_label_values() {
    assert_eq!(
        metrics_in(r#"sum(rate(pulse_sender_sends_total{outcome="pulse_x"}[5m])) / up"#),
        vec!["pulse_sender_sends_total".to_owned()]
    );
    assert!(emitted("pulse_smtp_send_duration_seconds_bucket"));
    assert!(!emitted("pulse_sends_total"));
}
