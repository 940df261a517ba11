//! Fault injection: what a user can meet (a lost WAL directory, an oversized message), each
//! against the real binary and a real broker. `cargo test -p twinlake --test e2e faults::`
//! runs just these.

use std::time::{Duration, Instant};

use crate::durability::{publish_numbered, rss_kib, status_kib};
use crate::support::{Broker, PUBACK, ScriptedBroker, Twinlake, free_port, message, publish};

/// Waits until `rows` rows of `measurements` are in the lake's files.
fn wait_until_persisted(twinlake: &Twinlake, rows: f64) {
    let sample = "twinlake_persisted_rows_total{table=\"measurements\"}";
    wait_for_metric_where(twinlake, sample, |persisted| persisted >= rows);
}

fn wait_for_metric(twinlake: &Twinlake, sample: &str, value: f64) {
    wait_for_metric_where(twinlake, sample, |now| now == value);
}

/// Waits (60 s at most) until the metric `sample` is there and `wanted` of its value.
fn wait_for_metric_where(twinlake: &Twinlake, sample: &str, wanted: impl Fn(f64) -> bool) {
    let value = twinlake.wait_for_metric(sample, Duration::from_secs(60), &wanted);
    assert!(wanted(value), "{sample} stayed at {value}");
}

/// A new container whose lake is on S3 starts with an empty WAL directory while the lake says
/// it persisted records up to some id. New records reused those ids, so after a crash replay
/// took them for persisted ones and skipped them: acknowledged messages lost.
#[test]
fn messages_acknowledged_after_the_wal_directory_was_replaced_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let persist_soon = ["--persist-max-age", "1s"];
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(port), &persist_soon);
    let url = twinlake.mqtt_url.clone();
    assert_eq!(
        publish_numbered(url.clone(), "before", 2_000, 0.0, 1),
        2_000
    );
    wait_until_persisted(&twinlake, 2_000.0);
    twinlake.stop();

    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    twinlake.start_again();
    assert_eq!(publish_numbered(url, "after", 10, 0.0, 1), 10);
    let after = "SELECT count(*) FROM measurements WHERE entity = 'main:device:after'";
    assert_eq!(
        twinlake.wait_for_count(after, 10, Duration::from_secs(20)),
        10
    );
    // SIGKILL: only the WAL holds the 10 (the embedded broker keeps nothing across it).
    twinlake.kill();
    twinlake.start_again();
    assert_eq!(twinlake.count(after), 10, "acknowledged messages lost");
    let before = "SELECT count(*) FROM measurements WHERE entity = 'main:device:before'";
    assert_eq!(twinlake.count(before), 2_000);
}

/// 110 KB of `properties` and 22,000 values in a 242 KB payload: copied into every value's row
/// it is 2.4 GB of text, past Arrow's 2 GiB offsets, and the server panicked. It must become a
/// `rejected` row with its reason while the server goes on.
#[test]
fn a_message_that_would_become_gigabytes_of_rows_is_rejected_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &[]);
    let properties = "p".repeat(110_000);
    // The same key 22,000 times: the streaming parser keeps each as a value, as the report had.
    let values = ",\"a\":1".repeat(22_000);
    let bomb = format!("{{\"properties\":\"{properties}\"{values}}}");
    assert!(
        bomb.len() < 256 * 1024,
        "{} bytes: over the payload limit",
        bomb.len()
    );
    publish(
        &twinlake.mqtt_url,
        vec![
            message("te/device/bomb///m/env", &bomb, false, 1),
            message("te/device/calm///m/env", "{\"t\":1}", false, 1),
        ],
    );
    let calm = "SELECT count(*) FROM measurements WHERE entity = 'main:device:calm'";
    assert_eq!(twinlake.wait_for_count(calm, 1, Duration::from_secs(20)), 1);
    let rejected = twinlake.query(
        "SELECT reason_code, reason, octet_length(CAST(payload AS VARCHAR)) AS bytes FROM rejected WHERE topic = 'twinlake/main/te/device/bomb///m/env'",
    );
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["reason_code"], "too_many_rows");
    assert_eq!(rejected[0]["bytes"], bomb.len());
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(reason.contains("22000 rows"), "{reason}");
    assert_eq!(
        twinlake.metric("twinlake_rejected_total{reason=\"too_many_rows\"}"),
        Some(1.0)
    );
    let bomb_rows = "SELECT count(*) FROM measurements WHERE entity = 'main:device:bomb'";
    assert_eq!(twinlake.count(bomb_rows), 0);
    eprintln!(
        "bomb message: rejected, server alive, RSS {} KiB",
        rss_kib(twinlake.pid())
    );
    // It stays rejected across a restart (the WAL replays the rejection, not the rows).
    twinlake.restart();
    assert_eq!(twinlake.count(calm), 1);
}

/// The peak resident memory of a process so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Result, sort and join bombs over HTTP while a device publishes: each ends in a clear error
/// within the limits, the server's memory stays bounded, and ingest goes on. A 30-million-row
/// result used to be collected and encoded whole: above 780 MB of RSS at a 256 MiB query limit.
#[test]
fn query_bombs_end_in_errors_within_the_limits_while_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--query-memory-mb", "256", "--query-timeout-s", "10"];
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &limits);
    let url = twinlake.mqtt_url.clone();
    let publisher = std::thread::spawn(move || publish_numbered(url, "steady", 3_000, 300.0, 1));
    let bombs = [
        ("result", "SELECT * FROM generate_series(1, 30000000)"),
        (
            "sort",
            "SELECT value FROM generate_series(1, 30000000) ORDER BY value DESC",
        ),
        (
            "join",
            "SELECT count(*) FROM generate_series(1, 200000) a JOIN generate_series(1, 200000) b ON a.value % 3 = b.value % 3",
        ),
    ];
    let mut peaks = Vec::new();
    for (kind, sql) in bombs {
        // A bomb ends in an error: before its answer began (a JSON error), or after (the
        // streamed answer is cut short). A complete answer would mean no limit held it.
        match crate::support::query_outcome(&twinlake.http, sql) {
            (503, Ok(body)) => assert!(
                body.contains("limit") || body.contains("Resources exhausted"),
                "{kind} bomb: {}",
                body.chars().take(300).collect::<String>()
            ),
            (200, Err(cut)) => eprintln!("{kind} bomb: answer cut short ({cut})"),
            (status, body) => panic!(
                "{kind} bomb: status {status}, {}",
                match body {
                    Ok(body) => format!("a whole answer of {} bytes", body.len()),
                    Err(e) => e,
                }
            ),
        }
        peaks.push((kind, peak_rss_kib(twinlake.pid())));
    }
    let acked = publisher.join().unwrap();
    assert_eq!(acked, 3_000);
    let steady = "SELECT count(*) FROM measurements WHERE entity = 'main:device:steady'";
    assert_eq!(
        twinlake.wait_for_count(steady, 3_000, Duration::from_secs(30)),
        3_000
    );
    let peak = peaks.last().map_or(0, |(_, kib)| *kib);
    eprintln!("query bombs at --query-memory-mb 256: peak RSS after each (KiB) {peaks:?}");
    assert!(
        peak < 640 * 1024,
        "peak RSS {peak} KiB under query bombs at a 256 MiB query limit"
    );
}

/// A query that timed out stops computing, so the next one has the query threads. A count
/// over a join whose keys barely differ used to run on for minutes after its timeout (the
/// aggregate took the join's rows without ever yielding, so the abort could not land): two
/// such queries held both threads of a 2-core machine and every later query timed out.
#[test]
fn a_query_past_its_timeout_stops_computing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--query-timeout-s", "3"];
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &limits);
    let join = "SELECT count(*) FROM generate_series(1, 200000) a \
                JOIN generate_series(1, 200000) b ON a.value % 3 = b.value % 3";
    let (status, body) = crate::support::query_outcome(&twinlake.http, join);
    assert_eq!(status, 503, "{body:?}");
    assert!(body.unwrap().contains("query timeout"));
    // A moment for the abort to land, then the server should be as idle as before.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(twinlake.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(twinlake.pid()) - before;
    assert!(
        used < 0.5,
        "{used:.2} s of CPU in the 3 s after the query timed out"
    );
}

/// User and system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    ticks as f64 / 100.0
}

/// A small tmpfs mounted at a path for the test's lifetime: as root, or through `sudo -n`
/// (scripts/test checks that one of them works), writable by the test's user.
struct SmallDisk {
    path: std::path::PathBuf,
}

/// `program` run as root: itself when the test is root, else through sudo without a password.
fn as_root(program: &str) -> std::process::Command {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|process| process.uid() == 0);
    if root {
        return std::process::Command::new(program);
    }
    let mut command = std::process::Command::new("sudo");
    command.args(["-n", program]);
    command
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = as_root("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=1777"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root or sudo without a password (scripts/test checks it)"
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Writes a file until the disk is full; removing it gives the space back.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = as_root("umount").arg("-l").arg(&self.path).status();
    }
}

/// The WAL's disk fills up under QoS 1 ingest through Mosquitto: Twinlake stops acknowledging
/// (the broker keeps the messages), queries go on, and once there is space again everything
/// arrives without a restart. Then a SIGKILL and a start on a full disk: it still starts.
#[test]
fn a_full_wal_disk_holds_acknowledgements_and_recovers_by_itself_and_across_a_restart() {
    let mosquitto = crate::support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("wal"), "3m");
    let small_segments = ["--wal-segment-mb", "1"];
    let broker = Broker::External(mosquitto.url());
    let mut twinlake = Twinlake::start(dir.path(), broker, &small_segments);
    let filler = disk.fill();

    let url = mosquitto.url();
    let first = std::thread::spawn(move || publish_numbered(url, "full", 2_000, 0.0, 10));
    wait_for_metric(&twinlake, "twinlake_wal_disk_full", 1.0);
    let full = "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:full' AND series = 'seq'";
    let stored = twinlake.count(full);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        twinlake.count(full),
        stored,
        "rows stored while the disk was full"
    );
    assert!(
        stored < 2_000,
        "the disk never filled: the test proves nothing"
    );
    assert_eq!(first.join().unwrap(), 2_000, "mosquitto took every message");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        twinlake.wait_for_count(full, 2_000, Duration::from_secs(60)),
        2_000
    );
    wait_for_metric(&twinlake, "twinlake_wal_disk_full", 0.0);
    eprintln!(
        "disk full: {stored} of 2000 messages stored before the disk filled; all after space returned, no restart"
    );

    let filler = disk.fill();
    let url = mosquitto.url();
    let second = std::thread::spawn(move || publish_numbered(url, "again", 500, 0.0, 10));
    wait_for_metric(&twinlake, "twinlake_wal_disk_full", 1.0);
    assert_eq!(second.join().unwrap(), 500);
    twinlake.kill();
    twinlake.start_again();
    assert_eq!(
        twinlake.count(full),
        2_000,
        "queries on a restart with a full disk"
    );
    std::fs::remove_file(&filler).unwrap();
    let again = "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:again' AND series = 'seq'";
    assert_eq!(
        twinlake.wait_for_count(again, 500, Duration::from_secs(60)),
        500
    );
    drop(twinlake);
    drop(disk);
}

/// The broker restarts without the session (persistence off): Twinlake reconnects, subscribes
/// again on the new session and stores what is published afterwards, and every message the old
/// broker acknowledged before is there.
#[test]
fn after_the_broker_restarts_without_the_session_ingest_subscribes_again() {
    let port = free_port();
    let mosquitto = crate::support::Mosquitto::start_on(port);
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &[]);
    assert_eq!(
        publish_numbered(mosquitto.url(), "old", 1_000, 0.0, 1),
        1_000
    );
    let old = "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:old'";
    assert_eq!(
        twinlake.wait_for_count(old, 1_000, Duration::from_secs(30)),
        1_000
    );

    drop(mosquitto);
    wait_for_metric(&twinlake, "twinlake_mqtt_subscribed", 0.0);
    let mosquitto = crate::support::Mosquitto::start_on(port);
    wait_for_metric(&twinlake, "twinlake_mqtt_subscribed", 1.0);
    assert_eq!(
        publish_numbered(mosquitto.url(), "new", 1_000, 0.0, 1),
        1_000
    );
    let new = "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:new'";
    assert_eq!(
        twinlake.wait_for_count(new, 1_000, Duration::from_secs(30)),
        1_000
    );
    assert_eq!(twinlake.count(old), 1_000);
    assert!(
        twinlake
            .metric("twinlake_acks_of_lost_sessions_total")
            .is_some(),
        "the count of dropped acks of lost sessions is in /metrics"
    );
}

/// While nothing can be acknowledged (the WAL's disk is full), ingest keeps taking messages
/// only up to its in-flight budgets. Counting messages alone, 20,000 messages of up to the
/// packet limit could sit in memory; the byte budget holds 200 KB messages to a handful.
#[test]
fn messages_held_unacknowledged_are_bounded_by_bytes() {
    let mosquitto = crate::support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("wal"), "3m");
    let budget = ["--max-inflight-bytes", "4MiB", "--wal-segment-mb", "1"];
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &budget);
    let filler = disk.fill();
    let large = format!("{{\"properties\":\"{}\",\"v\":1}}", "p".repeat(200_000));
    let messages = (0..100)
        .map(|_| message("te/device/large///m/env", &large, false, 1))
        .collect();
    publish(&mosquitto.url(), messages);
    wait_for_metric(&twinlake, "twinlake_wal_disk_full", 1.0);
    std::thread::sleep(Duration::from_secs(2));
    let held = twinlake.metric("twinlake_acks_pending").unwrap_or(f64::MAX);
    eprintln!("in-flight bytes: {held} messages of 200 KB held at a 4 MiB budget");
    assert!(
        held <= 21.0,
        "{held} messages of 200 KB held with a 4 MiB in-flight budget"
    );
    std::fs::remove_file(&filler).unwrap();
    let large_rows = "SELECT count(*) FROM measurements WHERE entity = 'main:device:large'";
    assert!(twinlake.wait_for_count(large_rows, 100, Duration::from_secs(60)) >= 100);
}

/// Devices that invent names: new series, new entities, registrations nested ever deeper, and
/// alarm types by the thousand (retained). Each is held to its limit: what passes it is a
/// `rejected` row with the reason, the rest is stored, and the server goes on.
#[test]
fn devices_that_invent_names_are_held_to_the_growth_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        "--max-series",
        "500",
        "--max-entities",
        "200",
        "--max-entity-depth",
        "16",
        "--max-retained-bytes",
        "64KiB",
    ];
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &limits);
    let url = twinlake.mqtt_url.clone();
    let rejected = |code: &str| {
        twinlake.count(&format!(
            "SELECT count(*) FROM rejected WHERE reason_code = '{code}'"
        ))
    };

    // A chain of 20 child devices, each under the previous one: 16 levels are allowed.
    let chain = (0..20)
        .map(|n| {
            let parent = match n {
                0 => "device/main//".to_owned(),
                n => format!("device/deep{}//", n - 1),
            };
            let payload = format!("{{\"@type\":\"child-device\",\"@parent\":\"{parent}\"}}");
            message(&format!("te/device/deep{n}//"), &payload, true, 1)
        })
        .collect();
    publish(&url, chain);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected("too_deep") == 0 {
        assert!(Instant::now() < deadline, "no registration was too deep");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Level 17 is refused; the levels below it wait for a parent that never comes.
    let rejected_deep = "SELECT count(*) FROM rejected WHERE reason_code = 'too_deep' AND topic = 'twinlake/main/te/device/deep16//'";
    assert_eq!(twinlake.count(rejected_deep), 1);
    let deepest = "SELECT CAST(max(depth) AS BIGINT) FROM entity_ancestors WHERE ancestor = 'main'";
    assert_eq!(twinlake.count(deepest), 16);

    // 400 new child devices: the hierarchy may hold 200 entities in all. (Each limit is
    // met in turn: a message refused for one limit adds nothing to the others.)
    let children = (0..400)
        .map(|n| message(&format!("te/device/c{n}///m/env"), "{\"t\":1}", false, 1))
        .collect();
    publish(&url, children);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected("too_many_entities") == 0 {
        assert!(
            Instant::now() < deadline,
            "no entity was refused past the limit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let entities = twinlake.count("SELECT count(*) FROM entities");
    assert!(entities <= 200, "{entities} entities with a limit of 200");

    // 1,000 series from one device, one new name per message.
    let series = (0..1_000)
        .map(|n| {
            message(
                "te/device/main///m/env",
                &format!("{{\"s{n}\":1}}"),
                false,
                1,
            )
        })
        .collect();
    publish(&url, series);
    let stored = "SELECT count(DISTINCT series) FROM measurements WHERE entity = 'main'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while twinlake.count(stored) + rejected("too_many_series") < 1_000 {
        assert!(
            Instant::now() < deadline,
            "not every series message was answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (kept, refused) = (twinlake.count(stored), rejected("too_many_series"));
    assert!(
        refused > 0 && kept < 1_000,
        "series limit: {kept} kept, {refused} rejected"
    );

    // 2,000 retained alarm types: the retained state keeps 64 KiB of them, all are stored.
    let alarms = (0..2_000)
        .map(|n| {
            let topic = format!("te/device/main///a/type{n}");
            message(
                &topic,
                "{\"text\":\"invented\",\"severity\":\"minor\"}",
                true,
                1,
            )
        })
        .collect();
    publish(&url, alarms);
    let stored_alarms = "SELECT count(*) FROM alarms WHERE entity = 'main'";
    assert_eq!(
        twinlake.wait_for_count(stored_alarms, 2_000, Duration::from_secs(30)),
        2_000
    );
    let untracked = twinlake
        .metric("twinlake_retained_untracked_total")
        .unwrap_or(0.0);
    assert!(
        untracked > 0.0,
        "the retained state never reached its 64 KiB"
    );
    eprintln!(
        "growth limits: series {kept} kept / {refused} rejected at 500; entities {entities} at 200; \
         the 17th of 20 nested registrations rejected at depth 16; {untracked} of 2000 retained alarms \
         untracked at 64 KiB; RSS {} KiB",
        rss_kib(twinlake.pid())
    );
}

/// The answers to Delta log writes are lost on the way back (the object store wrote the
/// commit; Twinlake saw a cut connection): whether the commit happened is for Twinlake to find
/// out. Deleting the files of a commit that did happen left a version pointing at missing
/// files. Every row must be there exactly once (after compaction), and no query may fail.
#[test]
fn commits_whose_answer_is_lost_lose_no_row_and_leave_no_missing_file() {
    let moto = crate::support::Moto::start("twinlake");
    let proxy = crate::support::TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = proxy.s3_flags("ambiguous");
    flags.extend(
        [
            "--persist-max-rows",
            "500",
            "--persist-max-age",
            "1s",
            "--compact-interval-s",
            "3",
            "--compact-min-files",
            "2",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    proxy.lose_answers_to(b"PUT ", b"/twinlake/ambiguous/measurements/_delta_log/0", 3);
    assert_eq!(
        publish_numbered(twinlake.mqtt_url.clone(), "cut", 3_000, 1_000.0, 1),
        3_000
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.answers_still_to_lose() > 0 {
        assert!(
            Instant::now() < deadline,
            "fewer commits than answers to lose"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let distinct =
        "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:cut'";
    let all = "SELECT count(*) FROM measurements WHERE entity = 'main:device:cut'";
    assert_eq!(
        twinlake.wait_for_count(distinct, 3_000, Duration::from_secs(60)),
        3_000
    );
    wait_until_persisted(&twinlake, 3_000.0);
    // Compaction merges whatever a commit written twice left, and reads every file it lists.
    assert_eq!(
        twinlake.wait_for_count_where(all, |count| count <= 3_000, Duration::from_secs(60)),
        3_000
    );

    // A second Twinlake with an empty WAL reads the same rows from S3 alone.
    let mut reader_flags = proxy.s3_flags("ambiguous");
    reader_flags.extend(["--persist-max-age", "1h"].map(str::to_owned));
    let reader_flags: Vec<&str> = reader_flags.iter().map(String::as_str).collect();
    drop(twinlake);
    let fresh = tempfile::tempdir().unwrap();
    let reader = Twinlake::start(fresh.path(), Broker::Embedded(free_port()), &reader_flags);
    assert_eq!(reader.count(distinct), 3_000);
    assert_eq!(reader.count(all), 3_000);
}

/// SIGKILL at random moments during QoS 1 ingest through Mosquitto, with persists and
/// compaction committing all the while. Every message Mosquitto acknowledged must be there
/// after each restart; repeats (redelivery of what was stored but not yet acknowledged) are
/// counted, and compaction must remove them. `TWINLAKE_FAULT_KILLS=100` runs 100 rounds.
#[test]
fn sigkill_during_ingest_persistence_and_compaction_loses_nothing() {
    use rand::{RngExt, SeedableRng};
    let rounds: u64 = std::env::var("TWINLAKE_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mosquitto = crate::support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // Persists every few hundred ms while groups share fsyncs (a 30 ms commit window): a persist
    // then often comes between two groups of one fsync, where acknowledged rows were once lost.
    let flags = [
        "--persist-max-rows",
        "100",
        "--persist-max-age",
        "1s",
        "--wal-commit-window-ms",
        "30",
        "--compact-interval-s",
        "1",
        "--compact-min-files",
        "2",
    ];
    let mut twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &flags);
    let total = rounds * 1_500;
    let url = mosquitto.url();
    let publisher = std::thread::spawn(move || publish_numbered(url, "loop", total, 1_500.0, 1));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let distinct =
        "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:loop'";
    let all = "SELECT count(*) FROM measurements WHERE entity = 'main:device:loop'";
    let mut lost_after_restart = Vec::new();
    let mut peak_repeats = 0;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..700)));
        let before = stored_seqs(&twinlake);
        twinlake.kill();
        twinlake.start_again();
        // What was queryable (so durable) before the kill is there after it.
        let after = stored_seqs(&twinlake);
        let mut gone: Vec<u64> = before.difference(&after).copied().collect();
        if !gone.is_empty() {
            gone.sort_unstable();
            lost_after_restart.push((round, gone));
        }
        peak_repeats = peak_repeats.max(twinlake.count(all) - after.len() as i64);
    }
    assert_eq!(
        lost_after_restart,
        Vec::new(),
        "rows gone after a restart, seed {seed}"
    );
    assert_eq!(
        publisher.join().unwrap(),
        total,
        "mosquitto acknowledged them all"
    );
    let arrived = twinlake.wait_for_count(distinct, total as i64, Duration::from_secs(60));
    if arrived < total as i64 {
        // Missing: lost, or still Mosquitto's (delivered but never acknowledged, which only a
        // new connection brings back). A restart tells which.
        eprintln!("kill loop: {arrived} of {total} before a restart, seed {seed}");
        twinlake.restart();
    }
    let stored = twinlake.wait_for_count(distinct, total as i64, Duration::from_secs(60));
    assert_eq!(
        stored,
        total as i64,
        "messages lost, seed {seed}; missing seq: {:?}",
        missing_seqs(&twinlake, total)
    );
    if arrived < total as i64 {
        // Not a loss (Mosquitto kept them), but a stall worth knowing of: reported, see issue 12.
        eprintln!(
            "kill loop: {} messages came only after a restart (delivered, never acknowledged), seed {seed}",
            total as i64 - arrived
        );
    }
    // Repeats are dropped when compaction merges the files holding them, a few seconds on.
    let merged =
        twinlake.wait_for_count_where(all, |count| count <= total as i64, Duration::from_secs(120));
    eprintln!(
        "kill loop: {rounds} SIGKILLs, {total} messages, 0 lost; at most {peak_repeats} rows stored twice right after a restart, {} once compaction had run; seed {seed}",
        merged - total as i64
    );
    assert_eq!(merged, total as i64, "repeats left after compaction");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The WAL directory is restored from a backup older than the lake: its records are all
/// persisted already (replaying them must not store them twice), and new records must not
/// reuse their ids, or a crash would make replay skip them.
#[test]
fn a_wal_restored_from_an_older_backup_repeats_nothing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let persist_soon = ["--persist-max-age", "1s"];
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &persist_soon);
    let url = twinlake.mqtt_url.clone();
    assert_eq!(publish_numbered(url.clone(), "a", 1_000, 0.0, 1), 1_000);
    wait_until_persisted(&twinlake, 1_000.0);
    twinlake.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("wal"), backup.path());

    twinlake.start_again();
    assert_eq!(publish_numbered(url.clone(), "b", 1_000, 0.0, 1), 1_000);
    wait_until_persisted(&twinlake, 1_000.0);
    twinlake.stop();
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    copy_dir(backup.path(), &dir.path().join("wal"));

    twinlake.start_again();
    assert_eq!(publish_numbered(url, "c", 100, 0.0, 1), 100);
    let count = |twinlake: &Twinlake, entity: &str| {
        twinlake.count(&format!(
            "SELECT count(*) FROM measurements WHERE entity = 'main:device:{entity}'"
        ))
    };
    let c = "SELECT count(*) FROM measurements WHERE entity = 'main:device:c'";
    assert_eq!(
        twinlake.wait_for_count(c, 100, Duration::from_secs(20)),
        100
    );
    twinlake.kill();
    twinlake.start_again();
    assert_eq!(
        (
            count(&twinlake, "a"),
            count(&twinlake, "b"),
            count(&twinlake, "c")
        ),
        (1_000, 1_000, 100),
        "rows after restoring an older WAL and a crash"
    );
}

/// S3 stops answering (a blackhole: connections hang rather than fail) while devices publish.
/// Ingest goes on into the WAL and memory, persists wait and retry, and once S3 answers again
/// every row reaches it; nothing is lost or stored twice. CI holds the blackhole 20 s;
/// `TWINLAKE_FAULT_BLACKHOLE_S=300` holds it five minutes.
#[test]
fn an_s3_blackhole_under_load_loses_nothing() {
    let hold = std::env::var("TWINLAKE_FAULT_BLACKHOLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs);
    let moto = crate::support::Moto::start("twinlake");
    let proxy = crate::support::TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = proxy.s3_flags("blackhole");
    flags.extend(["--persist-max-age", "1s", "--query-timeout-s", "5"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    let url = twinlake.mqtt_url.clone();
    assert_eq!(
        publish_numbered(url.clone(), "before", 1_000, 0.0, 1),
        1_000
    );
    wait_until_persisted(&twinlake, 1_000.0);

    proxy.set_blackhole(true);
    let began = Instant::now();
    let rate = 3_000.0 / hold.as_secs_f64().max(1.0);
    assert_eq!(publish_numbered(url, "during", 3_000, rate, 1), 3_000);
    // Ingest took every message while S3 hung (the metric needs no S3).
    let stored = "twinlake_rows_total{table=\"measurements\"}";
    wait_for_metric_where(&twinlake, stored, |rows| rows >= 4_000.0);
    std::thread::sleep(hold.saturating_sub(began.elapsed()));
    let persisted_during = twinlake
        .metric("twinlake_persisted_rows_total{table=\"measurements\"}")
        .unwrap_or(0.0);
    proxy.set_blackhole(false);

    let all = "SELECT count(*) FROM measurements";
    let distinct = "SELECT count(DISTINCT entity || CAST(value AS VARCHAR)) FROM measurements";
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let persisted = twinlake
            .metric("twinlake_persisted_rows_total{table=\"measurements\"}")
            .unwrap_or(0.0);
        if persisted >= 4_000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "persisted {persisted} of 4000 after the blackhole"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(twinlake.count(distinct), 4_000);
    eprintln!(
        "S3 blackhole: held {hold:?} while 3000 messages arrived; {persisted_during} rows persisted by then, all 4000 after; {} rows in all",
        twinlake.count(all)
    );
    let mut reader_flags = proxy.s3_flags("blackhole");
    reader_flags.extend(["--persist-max-age", "1h"].map(str::to_owned));
    let reader_flags: Vec<&str> = reader_flags.iter().map(String::as_str).collect();
    drop(twinlake);
    let fresh = tempfile::tempdir().unwrap();
    let reader = Twinlake::start(fresh.path(), Broker::Embedded(free_port()), &reader_flags);
    assert_eq!(
        reader.count(distinct),
        4_000,
        "rows in S3 after the blackhole"
    );
}

/// Sets a Delta table property with Python's `deltalake`, as an operator would.
fn set_table_property(moto_port: u16, table: &str, key: &str, value: &str) {
    let script = format!(
        "import deltalake\n\
         options = {{'AWS_ENDPOINT_URL': 'http://127.0.0.1:{moto_port}', 'AWS_ALLOW_HTTP': 'true',\n\
           'AWS_REGION': 'us-east-1', 'AWS_ACCESS_KEY_ID': 'test', 'AWS_SECRET_ACCESS_KEY': 'testtesttest'}}\n\
         table = deltalake.DeltaTable('{table}', storage_options=options)\n\
         table.alter.set_table_properties({{'{key}': '{value}'}})\n"
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with deltalake (scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Delta writes a checkpoint every `delta.checkpointInterval` versions (100 by default; 5 here,
/// set as an operator would). S3 never completes one (every answer to a checkpoint write is
/// lost, retries included): the commits stand, their files stay, every row is persisted once.
#[test]
fn failed_checkpoint_writes_on_s3_undo_no_commit() {
    let moto = crate::support::Moto::start("twinlake");
    let proxy = crate::support::TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = proxy.s3_flags("checkpoint");
    flags.extend(["--persist-max-rows", "50", "--persist-max-age", "1s"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    twinlake.stop();
    let table = "s3://twinlake/checkpoint/measurements";
    set_table_property(moto.port, table, "delta.checkpointInterval", "5");
    twinlake.start_again();
    proxy.lose_answers_to(b"PUT ", b".checkpoint.parquet", 1_000);
    let url = twinlake.mqtt_url.clone();
    assert_eq!(publish_numbered(url, "versions", 1_000, 100.0, 1), 1_000);
    wait_until_persisted(&twinlake, 1_000.0);
    let lost = 1_000 - proxy.answers_still_to_lose();
    assert!(lost > 0, "no checkpoint write was tried");
    let distinct =
        "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:versions'";
    let all = "SELECT count(*) FROM measurements WHERE entity = 'main:device:versions'";
    assert_eq!(
        (twinlake.count(distinct), twinlake.count(all)),
        (1_000, 1_000)
    );
    let failures = twinlake
        .metric("twinlake_persist_failures_total")
        .unwrap_or(0.0);
    eprintln!(
        "S3 checkpoint writes: {lost} answers lost, {failures} persist failures, every row once"
    );
}

/// S3 refuses the data files of one table (403 Forbidden, which no client retries): that
/// table's persists fail and retry, and every other table goes on persisting meanwhile. Persist
/// used to stop at the first failing table, so the tables after `measurements` waited for it.
#[test]
fn one_table_that_cannot_persist_holds_up_no_other() {
    let moto = crate::support::Moto::start("twinlake");
    let proxy = crate::support::TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = proxy.s3_flags("stall");
    flags.extend(["--persist-max-age", "1s"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    proxy.refuse(Some((b"PUT ", b"/twinlake/stall/measurements/date")));
    let events = (0..200)
        .map(|n| {
            let payload = format!("{{\"text\":\"event {n}\",\"time\":\"2026-11-30T10:00:00Z\"}}");
            message("te/device/main///e/door", &payload, false, 1)
        })
        .collect();
    let mut messages: Vec<_> = events;
    messages.push(message("te/device/main///m/env", "{\"t\":1}", false, 1));
    publish(&twinlake.mqtt_url, messages);
    let persisted = |table: &str| {
        twinlake
            .metric(&format!(
                "twinlake_persisted_rows_total{{table=\"{table}\"}}"
            ))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while persisted("events") < 200.0 {
        assert!(
            Instant::now() < deadline,
            "events not persisted while measurements fail: {}",
            persisted("events")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        persisted("measurements"),
        0.0,
        "S3 took the measurements after all"
    );
    // The failed round is counted once it has tried every table, maybe just after the
    // events' persist was.
    let failures = twinlake.wait_for_metric(
        "twinlake_persist_failures_total",
        Duration::from_secs(10),
        |failures| failures >= 1.0,
    );
    assert!(failures >= 1.0, "no persist failure counted");
    proxy.refuse(None);
    wait_until_persisted(&twinlake, 1.0);
}

/// Mosquitto 2.0 grants a subscription its ACL denies (under MQTT 3.1.1 it just delivers
/// nothing), so a broker that refuses one is played by a script: it refuses the first
/// SUBSCRIBE (return code 0x80), grants the next, then sends one QoS 1 message. Ingest used to
/// count the refusal as subscribed and never ask again.
#[test]
fn a_refused_subscription_is_shown_and_asked_again() {
    let broker = ScriptedBroker::bind();
    let url = broker.url();
    let script = std::thread::spawn(move || {
        let mut connection = broker.accept(false);
        assert!(connection.answer_subscribe(0x80, Duration::from_secs(40)));
        // Asked again within the 10 s retry, or never (keep-alive pings answered meanwhile).
        if !connection.answer_subscribe(0x01, Duration::from_secs(30)) {
            return (1, None);
        }
        connection.publish_qos1("te/device/main///m/env", "{\"refused_then_granted\":1}", 7);
        let (kind, body) = connection.next(Duration::from_secs(30)).expect("PUBACK");
        assert_eq!(kind, PUBACK, "PUBACK expected");
        (2, Some(body))
    });
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_twinlake"));
    let http = free_port();
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--pg-listen", "off"])
        .args(["--mqtt-url", &url])
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let twinlake = Twinlake::client(&format!("http://127.0.0.1:{http}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while twinlake.metric("twinlake_mqtt_subscribed").is_none() {
        assert!(Instant::now() < deadline, "twinlake did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let refused = twinlake.metric("twinlake_mqtt_subscribed");
    let (subscribes, puback) = script.join().unwrap();
    let stored = "SELECT count(*) FROM measurements WHERE series = 'refused_then_granted'";
    let rows = twinlake.wait_for_count(stored, 1, Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        refused,
        Some(0.0),
        "a refused subscription counted as subscribed"
    );
    assert_eq!(subscribes, 2, "the subscription was not asked again");
    assert_eq!(
        puback,
        Some(vec![0x00, 0x07]),
        "the message was acknowledged"
    );
    assert_eq!(rows, 1);
}

/// An acknowledgement of a session the broker dropped is never sent on the next session,
/// where its packet id means nothing or, worse, a new message of the broker's. The message's
/// WAL record waits for disk space (a full tmpfs), so its ack is due only after Twinlake has
/// reconnected, been given a new session and subscribed again: the moment a real broker
/// cannot be made to hit. The message itself is stored (it reached the WAL).
#[test]
fn an_ack_of_a_dropped_session_is_not_sent_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("wal"), "3m");
    let broker = ScriptedBroker::bind();
    let url = broker.url();
    let (to_script, script_cue) = std::sync::mpsc::channel::<()>();
    let (to_test, test_cue) = std::sync::mpsc::channel::<()>();
    let script = std::thread::spawn(move || {
        let mut first = broker.accept(false);
        assert!(first.answer_subscribe(0x01, Duration::from_secs(40)));
        script_cue.recv().unwrap();
        // Incompressible `properties`, so that the record needs disk pages the WAL lacks.
        let mut seed = 1u64;
        let noise: String = (0..16_384)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                char::from_digit((seed >> 60) as u32, 16).unwrap()
            })
            .collect();
        let old = format!("{{\"properties\":\"{noise}\",\"old_session\":1}}");
        first.publish_qos1("te/device/main///m/env", &old, 7);
        std::thread::sleep(Duration::from_millis(500));
        drop(first);
        let mut second = broker.accept(false);
        assert!(second.answer_subscribe(0x01, Duration::from_secs(40)));
        to_test.send(()).unwrap();
        // Whatever comes on the new session until a second after the old message is stored
        // (its ack, were it sent, would follow the rows by moments).
        let mut stale = Vec::new();
        let mut until = None;
        while until.is_none_or(|until| Instant::now() < until) {
            if until.is_none() && script_cue.try_recv().is_ok() {
                until = Some(Instant::now() + Duration::from_secs(1));
            }
            if let Some(packet) = second.next(Duration::from_millis(100)) {
                stale.push(packet);
            }
        }
        second.publish_qos1("te/device/main///m/env", "{\"new_session\":1}", 7);
        let (kind, body) = second.next(Duration::from_secs(30)).expect("PUBACK");
        (stale, (kind, body))
    });
    let twinlake = Twinlake::start(dir.path(), Broker::External(url), &[]);
    let filler = disk.fill();
    to_script.send(()).unwrap();
    wait_for_metric(&twinlake, "twinlake_wal_disk_full", 1.0);
    test_cue.recv().unwrap();
    wait_for_metric(&twinlake, "twinlake_mqtt_subscribed", 1.0);
    std::fs::remove_file(&filler).unwrap();
    let old = "SELECT count(*) FROM measurements WHERE series = 'old_session'";
    assert_eq!(twinlake.wait_for_count(old, 1, Duration::from_secs(30)), 1);
    to_script.send(()).unwrap();
    let (stale, puback) = script.join().unwrap();
    assert_eq!(
        stale,
        Vec::new(),
        "packets on the new session before its first message"
    );
    wait_for_metric(&twinlake, "twinlake_acks_of_lost_sessions_total", 1.0);
    assert_eq!(
        puback,
        (PUBACK, vec![0x00, 0x07]),
        "the new message acknowledged"
    );
    let new = "SELECT count(*) FROM measurements WHERE series = 'new_session'";
    assert_eq!(twinlake.wait_for_count(new, 1, Duration::from_secs(10)), 1);
}

/// Queries beyond `--query-max-concurrent` wait for a turn: with one turn, a quick query asked
/// while a slow one runs is answered only once the slow one has ended (at its timeout).
#[test]
fn queries_beyond_the_concurrency_limit_wait_for_a_turn() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--query-max-concurrent", "1", "--query-timeout-s", "4"];
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &limits);
    let http = twinlake.http.clone();
    let slow = std::thread::spawn(move || {
        let join = "SELECT count(*) FROM generate_series(1, 200000) a JOIN generate_series(1, 200000) b ON a.value % 3 = b.value % 3";
        crate::support::query_outcome(&http, join).0
    });
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let (status, _) = crate::support::query_outcome(&twinlake.http, "SELECT 1");
    let waited = began.elapsed();
    assert_eq!(
        slow.join().unwrap(),
        503,
        "the slow query ends at its timeout"
    );
    eprintln!("concurrency: SELECT 1 waited {waited:?} for the one turn (status {status})");
    assert!(
        waited >= Duration::from_secs(2),
        "SELECT 1 was answered after {waited:?}, beside the slow query: no limit"
    );
}

/// The numbers of the `loop` device's messages that are queryable.
fn stored_seqs(twinlake: &Twinlake) -> std::collections::HashSet<u64> {
    let rows = twinlake.query(
        "SELECT DISTINCT CAST(value AS BIGINT) AS seq FROM measurements WHERE entity = 'main:device:loop'",
    );
    rows.iter().filter_map(|row| row["seq"].as_u64()).collect()
}

/// The numbers of the `loop` device's messages that are not stored, for a failure to name.
fn missing_seqs(twinlake: &Twinlake, total: u64) -> Vec<u64> {
    let stored = stored_seqs(twinlake);
    (0..total).filter(|n| !stored.contains(n)).collect()
}
