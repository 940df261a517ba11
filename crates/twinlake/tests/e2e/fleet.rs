//! A fleet through real bridges: three gateways, each a local Mosquitto with the bridge file of
//! docs/fleet.md, forward to a central Mosquitto that authenticates them by client certificate
//! and holds them to the ACL of docs/fleet.md; Twinlake ingests from the central broker.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Broker, Mosquitto, Twinlake, free_port, make_certificates, make_client_certificate,
    make_readable_by_all, message, publish, run,
};

const GATEWAYS: [&str; 3] = ["truck1", "truck2", "truck3"];

/// The gateway of the spec examples through a bridge: its entities get the names the plain
/// topics' default gateway gives them, so the same rows are expected.
const SPEC_GATEWAY: &str = "main";

/// The first code block after `heading` in docs/fleet.md: the tests use the files exactly as
/// the documentation shows them.
pub(crate) fn documented(heading: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/fleet.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = &doc[doc
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in fleet.md"))..];
    let start = section.find("```\n").expect("a code block") + 4;
    let length = section[start..].find("```").expect("its end");
    section[start..start + length].to_owned()
}

/// The central broker: a password listener for Twinlake and a TLS listener for gateways, which
/// authenticate with a certificate whose common name is their id.
struct Central {
    broker: Mosquitto,
    upstream: Upstream,
}

/// Where a gateway's bridge connects: a TLS port, and the directory of the CA, the server's
/// and every gateway's certificate.
pub(crate) struct Upstream {
    pub(crate) tls_port: u16,
    pub(crate) certificates: PathBuf,
}

impl Central {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        make_certificates(&d);
        for gateway in GATEWAYS.iter().chain([&SPEC_GATEWAY]) {
            make_client_certificate(&d, gateway);
        }
        std::fs::write(
            d.join("acl"),
            documented("### Write rights on a central broker"),
        )
        .unwrap();
        std::fs::write(d.join("passwords"), "").unwrap();
        run(Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(d.join("passwords"))
            .args(["twinlake", "s3cret"]));
        let (port, tls_port) = (free_port(), free_port());
        let p = d.display();
        let config = format!(
            "allow_anonymous false\npassword_file {p}/passwords\nacl_file {p}/acl\n\
             persistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {p}/ca.pem\ncertfile {p}/broker.pem\n\
             keyfile {p}/broker.key\nrequire_certificate true\nuse_identity_as_username true\n"
        );
        make_readable_by_all(&d);
        let broker = Mosquitto::start_with_config(dir, port, config);
        Self {
            broker,
            upstream: Upstream {
                tls_port,
                certificates: d,
            },
        }
    }
}

impl Central {
    /// Twinlake ingesting from this broker, as user `twinlake` (the ACL's reader).
    fn twinlake(&self, data_dir: &Path) -> Twinlake {
        let credentials = ["--mqtt-username", "twinlake", "--mqtt-password", "s3cret"];
        Twinlake::start(data_dir, Broker::External(self.broker.url()), &credentials)
    }
}

/// A gateway's own broker: its local publishers use it anonymously, and the documented bridge
/// forwards its `te/` tree to the central broker.
pub(crate) struct Gateway {
    port: u16,
    config: String,
    broker: Option<Mosquitto>,
    /// Where its broker keeps its persistence, across restarts.
    _persistence: tempfile::TempDir,
}

impl Gateway {
    fn start(id: &'static str, central: &Central) -> Self {
        Self::start_with(id, &central.upstream, |bridge| bridge)
    }

    /// A gateway whose documented bridge file is first changed by `adapt`.
    pub(crate) fn start_with(
        id: &str,
        upstream: &Upstream,
        adapt: impl Fn(String) -> String,
    ) -> Self {
        let persistence = tempfile::tempdir().unwrap();
        let d = persistence.path().to_owned();
        let certificates = upstream.certificates.display();
        let bridge = documented("### thin-edge 1.x, or any Mosquitto: a bridge")
            .replace(
                "central.example.com:8883",
                &format!("127.0.0.1:{}", upstream.tls_port),
            )
            .replace(
                "/etc/ssl/certs/twinlake-ca.pem",
                &format!("{certificates}/ca.pem"),
            )
            .replace(
                "/etc/tedge/device-certs/tedge-certificate.pem",
                &format!("{certificates}/{id}.pem"),
            )
            .replace(
                "/etc/tedge/device-certs/tedge-private-key.pem",
                &format!("{certificates}/{id}.key"),
            )
            .replace("<device-id>", id);
        let bridge = adapt(bridge);
        let settings = documented("A gateway that may be offline for a while")
            .replace("/var/lib/mosquitto/", &format!("{}/", d.display()));
        let port = free_port();
        let config =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{settings}\n{bridge}");
        // Mosquitto drops root for its own user, which must write the persistence file.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let broker =
            Mosquitto::start_with_config(tempfile::tempdir().unwrap(), port, config.clone());
        Self {
            port,
            config,
            broker: Some(broker),
            _persistence: persistence,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What a local thin-edge component publishes, QoS 1.
    pub(crate) fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let port = self.port.to_string();
        let mut command = Command::new("mosquitto_pub");
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ]);
        if retain {
            command.arg("-r");
        }
        run(&mut command);
    }

    /// Stops the gateway's broker (it saves its retained messages) and starts it again on the
    /// same port and files: the bridge reconnects and replays the retained state.
    pub(crate) fn restart(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            broker.terminate();
        }
        let config = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start_with_config(config, self.port, self.config.clone());
        self.broker = Some(broker);
    }
}

#[test]
fn gateways_bridged_as_documented_keep_their_trees_apart() {
    let central = Central::start();
    let dir = tempfile::tempdir().unwrap();
    let twinlake = central.twinlake(dir.path());
    let mut gateways: Vec<Gateway> = GATEWAYS
        .iter()
        .map(|id| Gateway::start(id, &central))
        .collect();

    // Every gateway's components use the same local topic ids.
    for (n, gateway) in gateways.iter().enumerate() {
        gateway.publish("te/device/main///twin/depot", "\"depotA\"", true);
        gateway.publish(
            "te/device/child01//",
            r#"{"@type":"child-device","name":"child01"}"#,
            true,
        );
        gateway.publish(
            "te/device/main/service/tedge-agent",
            r#"{"@type":"service","name":"tedge-agent"}"#,
            true,
        );
        gateway.publish(
            "te/device/main///a/lowfuel",
            r#"{"text":"low","severity":"major"}"#,
            true,
        );
        gateway.publish(
            "te/device/child01///m/env",
            &format!("{{\"temperature\":{n}}}"),
            false,
        );
    }
    let readings = "SELECT count(*) FROM measurements WHERE series = 'temperature'";
    assert_eq!(
        twinlake.wait_for_count(readings, 3, Duration::from_secs(30)),
        3
    );
    assert_eq!(
        twinlake.query("SELECT gateway, entity, value FROM measurements ORDER BY gateway"),
        vec![
            json!({"gateway": "truck1", "entity": "truck1:device:child01", "value": 0.0}),
            json!({"gateway": "truck2", "entity": "truck2:device:child01", "value": 1.0}),
            json!({"gateway": "truck3", "entity": "truck3:device:child01", "value": 2.0}),
        ]
    );
    let registered = "SELECT count(*) FROM entities WHERE name IN ('child01', 'tedge-agent')";
    assert_eq!(
        twinlake.wait_for_count(registered, 6, Duration::from_secs(30)),
        6
    );
    let truck2 = twinlake.query(
        "SELECT entity, topic_id, kind, parent FROM entities WHERE gateway = 'truck2' \
         AND entity NOT LIKE '%mosquitto-twinlake-bridge' ORDER BY entity",
    );
    assert_eq!(
        truck2,
        vec![
            json!({"entity": "truck2", "topic_id": "device/main//", "kind": "device", "parent": null}),
            json!({"entity": "truck2:device:child01", "topic_id": "device/child01//", "kind": "child-device", "parent": "truck2"}),
            json!({"entity": "truck2:device:main:service:tedge-agent", "topic_id": "device/main/service/tedge-agent", "kind": "service", "parent": "truck2"}),
        ]
    );
    assert_eq!(
        twinlake.count("SELECT count(*) FROM gateways"),
        3,
        "{:?}",
        twinlake.query("SELECT * FROM gateways")
    );
    // The bridge's own state arrives as the health of a service of the gateway.
    let bridges = "SELECT count(*) FROM health_current \
                   WHERE entity LIKE '%:device:main:service:mosquitto-twinlake-bridge' AND status = 'up'";
    assert_eq!(
        twinlake.wait_for_count(bridges, 3, Duration::from_secs(30)),
        3
    );

    // A gateway moves to another depot: the twin history of each gateway says which depot it
    // was in, when.
    gateways[0].publish("te/device/main///twin/depot", "\"depotB\"", true);
    let moved = "SELECT count(*) FROM gateway_twin_history WHERE fragment = 'depot'";
    assert_eq!(
        twinlake.wait_for_count(moved, 4, Duration::from_secs(30)),
        4
    );
    assert_eq!(
        twinlake.query(
            "SELECT gateway, json_get_str(value) AS depot FROM gateway_twin_history \
             WHERE fragment = 'depot' AND valid_to IS NULL ORDER BY gateway"
        ),
        vec![
            json!({"gateway": "truck1", "depot": "depotB"}),
            json!({"gateway": "truck2", "depot": "depotA"}),
            json!({"gateway": "truck3", "depot": "depotA"}),
        ]
    );

    // A restarted gateway broker reconnects its bridge and replays its retained state: no
    // registration, twin or alarm row is added.
    let state = "SELECT (SELECT count(*) FROM entity_changes) * 1000000 \
                 + (SELECT count(*) FROM twin_changes) * 1000 + (SELECT count(*) FROM alarms)";
    let before = twinlake.count(state);
    gateways[1].restart();
    gateways[1].publish("te/device/child01///m/env", r#"{"after_restart":1}"#, false);
    let after_restart = "SELECT count(*) FROM measurements WHERE series = 'after_restart'";
    assert_eq!(
        twinlake.wait_for_count(after_restart, 1, Duration::from_secs(30)),
        1
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        twinlake.count(state),
        before,
        "rows added by a bridge's retained replay"
    );
    let replays = twinlake
        .metric("twinlake_retained_duplicates_total")
        .unwrap_or(0.0);
    assert!(
        replays >= 4.0,
        "the replay did not arrive: {replays} duplicates"
    );

    // A gateway may write its own subtree only: truck1 publishing as truck3 is refused by the
    // central broker's ACL (MQTT 3.1.1 acknowledges and drops it).
    let c = central.upstream.certificates.display();
    let tls_port = central.upstream.tls_port.to_string();
    let as_truck1 = |topic: &str, payload: &str| {
        run(Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port,
                "-q",
                "1",
                "-i",
                "truck1-test",
            ])
            .args(["--cafile", &format!("{c}/ca.pem")])
            .args([
                "--cert",
                &format!("{c}/truck1.pem"),
                "--key",
                &format!("{c}/truck1.key"),
            ])
            .args(["-t", topic, "-m", payload]));
    };
    as_truck1("twinlake/truck3/te/device/main///m/env", r#"{"spoofed":1}"#);
    as_truck1("twinlake/truck1/te/device/main///m/env", r#"{"own":1}"#);
    let own = "SELECT count(*) FROM measurements WHERE series = 'own' AND gateway = 'truck1'";
    assert_eq!(twinlake.wait_for_count(own, 1, Duration::from_secs(30)), 1);
    assert_eq!(
        twinlake.count("SELECT count(*) FROM measurements WHERE series = 'spoofed'"),
        0,
        "a gateway wrote under another gateway's prefix"
    );
    drop(gateways);
}

/// The hierarchy across 1,000 gateways (what a central broker forwards): each has a main device
/// with a depot in its twin and a child device; half of them move to another depot between two
/// readings. Readings group by the depot as it was when each was taken, one gateway's subtree
/// and `latest` are that gateway's alone, before and after the rows are persisted.
#[test]
fn a_thousand_gateways_grouped_by_their_depot_as_it_was() {
    const COUNT: usize = 1_000;
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let persist_soon = ["--persist-max-age", "1s"];
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &persist_soon);
    let topic = |n: usize, rest: &str| format!("twinlake/gw{n:04}/te/{rest}");
    let mut first = Vec::new();
    for n in 0..COUNT {
        let depot = format!("\"depot{}\"", n % 10);
        first.push(message(
            &topic(n, "device/main///twin/depot"),
            &depot,
            true,
            1,
        ));
        first.push(message(
            &topic(n, "device/child01//"),
            r#"{"@type":"child-device"}"#,
            true,
            1,
        ));
        let reading = format!("{{\"temperature\":{n}}}");
        first.push(message(
            &topic(n, "device/child01///m/env"),
            &reading,
            false,
            1,
        ));
    }
    publish(&twinlake.mqtt_url, first);
    let readings = "SELECT count(*) FROM measurements";
    assert_eq!(
        twinlake.wait_for_count(readings, COUNT as i64, Duration::from_secs(60)),
        COUNT as i64
    );
    let moves: Vec<_> = (0..COUNT)
        .step_by(2)
        .map(|n| message(&topic(n, "device/main///twin/depot"), "\"depotX\"", true, 1))
        .collect();
    publish(&twinlake.mqtt_url, moves);
    let moved = "SELECT count(*) FROM gateway_twin_history WHERE value = '\"depotX\"'";
    assert_eq!(
        twinlake.wait_for_count(moved, 500, Duration::from_secs(60)),
        500
    );
    let second = (0..COUNT)
        .map(|n| {
            message(
                &topic(n, "device/child01///m/env"),
                "{\"temperature\":-1}",
                false,
                1,
            )
        })
        .collect();
    publish(&twinlake.mqtt_url, second);
    let all = 2 * COUNT as i64;
    assert_eq!(
        twinlake.wait_for_count(readings, all, Duration::from_secs(60)),
        all
    );

    let check = |when: &str| {
        assert_eq!(
            twinlake.count("SELECT count(*) FROM gateways"),
            COUNT as i64,
            "{when}"
        );
        assert_eq!(
            twinlake.count("SELECT count(*) FROM entities WHERE parent = gateway"),
            COUNT as i64,
            "every child under its own gateway's main device, {when}"
        );
        // Each reading with the depot its gateway was in when it was taken.
        let by_depot = twinlake.query(
            "SELECT json_get_str(d.value) AS depot, count(*) AS readings \
             FROM measurements m JOIN gateway_twin_history d \
               ON d.gateway = m.gateway AND d.fragment = 'depot' \
              AND m.time >= d.valid_from AND (d.valid_to IS NULL OR m.time < d.valid_to) \
             GROUP BY depot ORDER BY depot",
        );
        // Gateway n starts in depot n % 10; the even ones (even depots) move to depotX, so an
        // even depot keeps its first readings only, an odd one both.
        let mut expected: Vec<Value> = (0..10)
            .map(|d| json!({"depot": format!("depot{d}"), "readings": 100 + 100 * (d % 2)}))
            .collect();
        expected.push(json!({"depot": "depotX", "readings": 500}));
        assert_eq!(by_depot, expected, "{when}");
        // One gateway's subtree and its latest values are its own.
        assert_eq!(
            twinlake.query(
                "SELECT entity, value FROM measurements \
                 WHERE in_subtree(entity, 'gw0042', time) ORDER BY value"
            ),
            vec![
                json!({"entity": "gw0042:device:child01", "value": -1.0}),
                json!({"entity": "gw0042:device:child01", "value": 42.0}),
            ],
            "{when}"
        );
        assert_eq!(
            twinlake.query("SELECT entity, value FROM latest WHERE gateway = 'gw0042'"),
            vec![json!({"entity": "gw0042:device:child01", "value": -1.0})],
            "{when}"
        );
    };
    check("in memory");
    let files = twinlake.wait_for_metric(
        "twinlake_lake_files{table=\"measurements\"}",
        Duration::from_secs(30),
        |files| files >= 1.0,
    );
    assert!(files >= 1.0, "nothing persisted");
    assert_eq!(twinlake.count(readings), all);
    check("persisted");
}

/// Every example message of the thin-edge spec (§6), published on a gateway's own broker and
/// forwarded by the documented bridge: the same rows as when they are published to Twinlake's
/// broker directly, with the bridged topics in `rejected`.
#[test]
fn the_spec_examples_through_a_gateway_bridge() {
    let central = Central::start();
    let dir = tempfile::tempdir().unwrap();
    let twinlake = central.twinlake(dir.path());
    // The bridge's own state would be a service and health rows more than §6 has.
    let gateway = Gateway::start_with(SPEC_GATEWAY, &central.upstream, |bridge| {
        bridge.replace("notifications true", "notifications false")
    });
    publish(&gateway.url(), crate::spec::spec_messages());
    crate::spec::check_spec_rows(&twinlake, "twinlake/main/");
}
