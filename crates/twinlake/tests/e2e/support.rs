//! Processes and clients for the end-to-end tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Mosquitto broker on a free loopback port, stopped on drop.
pub(crate) struct Mosquitto {
    pub(crate) port: u16,
    /// The TLS listener (which also requires a password), when started with [`Mosquitto::start_with_tls`].
    pub(crate) tls: Option<TlsListener>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A Mosquitto listener that requires TLS and a username and password.
pub(crate) struct TlsListener {
    pub(crate) port: u16,
    /// The CA certificate that signed the broker's certificate.
    pub(crate) ca_file: PathBuf,
    pub(crate) username: &'static str,
    pub(crate) password: &'static str,
}

const MOSQUITTO_PLAIN: &str = "allow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n";

impl Mosquitto {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A broker on a given port, e.g. one that replaces a stopped broker (with none of its
    /// sessions: persistence is off).
    pub(crate) fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("listener {port} 127.0.0.1\n{MOSQUITTO_PLAIN}");
        Self::spawn(dir, port, config, None)
    }

    /// A plain anonymous listener plus a TLS listener with password authentication, with a CA
    /// and a broker certificate for 127.0.0.1 made by `openssl` for this broker only.
    pub(crate) fn start_with_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = free_port();
        make_certificates(dir.path());
        let passwords = dir.path().join("passwords");
        std::fs::write(&passwords, "").unwrap();
        run(Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwords)
            .args(["ingest", "s3cret"]));
        let d = dir.path().display();
        let config = format!(
            "per_listener_settings true\n\
             listener {port} 127.0.0.1\n{MOSQUITTO_PLAIN}\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwords\n\
             cafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n"
        );
        let tls = TlsListener {
            port: tls_port,
            ca_file: dir.path().join("ca.pem"),
            username: "ingest",
            password: "s3cret",
        };
        make_readable_by_all(dir.path());
        let mosquitto = Self::spawn(dir, port, config, Some(tls));
        wait_for_port(tls_port, "mosquitto (TLS)");
        mosquitto
    }

    /// A broker with a configuration of the test's own, in `dir` (kept while it runs), whose
    /// first listener is on `port`.
    pub(crate) fn start_with_config(dir: tempfile::TempDir, port: u16, config: String) -> Self {
        Self::spawn(dir, port, config, None)
    }

    /// Stops it as an operator would (SIGTERM: it saves its persistence first) and waits.
    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    fn spawn(dir: tempfile::TempDir, port: u16, config: String, tls: Option<TlsListener>) -> Self {
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "mosquitto must be installed: apt-get install -y mosquitto (scripts/test does it)",
            );
        wait_for_port(port, "mosquitto");
        Self {
            port,
            tls,
            child,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// A client key and certificate (`<name>.key`, `<name>.pem`) with common name `name`, signed
/// by the CA of [`make_certificates`] in the same directory.
pub(crate) fn make_client_certificate(dir: &Path, name: &str) {
    // An X.509 v3 client certificate, as `tedge cert create` makes (rustls refuses v1 ones).
    let extensions = format!("{name}.ext");
    std::fs::write(
        dir.join(&extensions),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    make_signed(dir, name, name, &["-extfile", &extensions]);
}

/// A CA (`ca.pem`) and a broker key and certificate for 127.0.0.1 signed by it.
pub(crate) fn make_certificates(dir: &Path) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=e2e-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]));
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    make_signed(dir, "broker", "127.0.0.1", &["-extfile", "san.ext"]);
}

/// `<name>.key` and `<name>.pem`, a client certificate for `name` signed by the CA in `dir`
/// that expired in 2020 (`openssl ca` can date a certificate; `x509 -req` cannot).
pub(crate) fn make_expired_client_certificate(dir: &Path, name: &str) {
    let db = dir.join(format!("{name}-ca-db"));
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("serial"), "01\n").unwrap();
    let config = format!(
        "[ca]\ndefault_ca = old\n[old]\ndatabase = {db}/index.txt\nserial = {db}/serial\n\
         new_certs_dir = {db}\ndefault_md = sha256\npolicy = any\nx509_extensions = client\n\
         [any]\ncommonName = supplied\n\
         [client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n",
        db = db.display()
    );
    let config_file = format!("{name}-ca.cnf");
    std::fs::write(dir.join(&config_file), config).unwrap();
    let (csr, pem) = make_key_and_request(dir, name, name);
    run(Command::new("openssl").current_dir(dir).args([
        "ca",
        "-batch",
        "-config",
        &config_file,
        "-cert",
        "ca.pem",
        "-keyfile",
        "ca.key",
        "-in",
        &csr,
        "-out",
        &pem,
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
    ]));
}

/// `<file>.key` and its signing request `<file>.csr` for common name `common_name`; returns the
/// request's name and the name its certificate gets (`<file>.pem`).
fn make_key_and_request(dir: &Path, file: &str, common_name: &str) -> (String, String) {
    let (key, csr) = (format!("{file}.key"), format!("{file}.csr"));
    let subject = format!("/CN={common_name}");
    run(Command::new("openssl").current_dir(dir).args([
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr,
    ]));
    (csr, format!("{file}.pem"))
}

/// `<file>.key` and `<file>.pem` for common name `common_name`, signed by the CA in `dir`.
fn make_signed(dir: &Path, file: &str, common_name: &str, extra: &[&str]) {
    let (csr, pem) = make_key_and_request(dir, file, common_name);
    let sign = [
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &pem,
    ];
    run(Command::new("openssl")
        .current_dir(dir)
        .args([&sign[..], extra].concat()));
}

/// Mosquitto started as root drops to its own user before it reads certificates and passwords.
pub(crate) fn make_readable_by_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let readable = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    readable(dir, 0o755);
    for entry in std::fs::read_dir(dir).unwrap() {
        readable(&entry.unwrap().path(), 0o644);
    }
}

pub(crate) fn run(command: &mut Command) {
    let output = command.output().expect("run a test tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which broker Twinlake ingests from.
#[derive(Debug, Clone)]
pub(crate) enum Broker {
    /// The embedded broker, on this port.
    Embedded(u16),
    External(String),
}

/// A `twinlake serve` process with its own data directory and ports.
pub(crate) struct Twinlake {
    pub(crate) http: String,
    pub(crate) mqtt_url: String,
    /// The PostgreSQL port (each start gets a free one, unless the flags name it).
    pub(crate) pg_port: u16,
    data_dir: PathBuf,
    broker: Broker,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Twinlake {
    pub(crate) fn start(data_dir: &Path, broker: Broker, extra: &[&str]) -> Self {
        let mqtt_url = match &broker {
            Broker::Embedded(port) => format!("mqtt://127.0.0.1:{port}"),
            Broker::External(url) => url.clone(),
        };
        let mut twinlake = Self {
            http: String::new(),
            mqtt_url,
            pg_port: 0,
            data_dir: data_dir.to_owned(),
            broker,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        twinlake.spawn();
        twinlake
    }

    fn spawn(&mut self) {
        let http_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_twinlake"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(&self.extra)
            .env("RUST_LOG", "warn,buoyant_kernel=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match &self.broker {
            Broker::Embedded(port) => command
                .arg("--mqtt-listen")
                .arg(format!("127.0.0.1:{port}")),
            Broker::External(url) => command.arg("--mqtt-url").arg(url),
        };
        if !self.extra.iter().any(|flag| flag == "--pg-listen") {
            self.pg_port = free_port();
            command
                .arg("--pg-listen")
                .arg(format!("127.0.0.1:{}", self.pg_port));
        }
        self.child = Some(command.spawn().expect("start twinlake serve"));
        self.http = format!("http://127.0.0.1:{http_port}");
        wait_for_port(http_port, "twinlake");
        self.wait_until_subscribed();
    }

    fn wait_until_subscribed(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.metric("twinlake_mqtt_subscribed") == Some(1.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "twinlake did not subscribe to the broker"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A value from `/metrics` (the full sample name, labels included).
    pub(crate) fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::blocking_get(&format!("{}/metrics", self.http))?;
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// A handle that only queries a server another handle owns (it stops nothing on drop).
    pub(crate) fn client(http: &str) -> Self {
        Self {
            http: http.to_owned(),
            mqtt_url: String::new(),
            pg_port: 0,
            data_dir: PathBuf::new(),
            broker: Broker::External(String::new()),
            extra: Vec::new(),
            child: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Stops with SIGTERM (graceful: commits and acknowledges what it holds) and waits.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "twinlake exited with {status} after SIGTERM"
            );
        }
    }

    /// Kills with SIGKILL: no chance to flush anything.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Runs SQL and returns the rows as JSON objects; panics with the server's error.
    pub(crate) fn query(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.query_as(sql, "json");
        assert_eq!(status, 200, "{sql}: {body}");
        serde_json::from_str::<Vec<Value>>(&body).unwrap_or_else(|e| panic!("{sql}: {e}: {body}"))
    }

    /// Runs SQL with the result in `format`; returns the HTTP status and the body.
    pub(crate) fn query_as(&self, sql: &str, format: &str) -> (u16, String) {
        let request = serde_json::json!({ "sql": sql, "format": format });
        reqwest::blocking_post(&format!("{}/api/v1/query", self.http), &request)
    }

    pub(crate) fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0]
            .as_object()
            .and_then(|row| row.values().next())
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("{sql} gave no count"))
    }

    /// Waits until `sql` (a count) reaches at least `expected`; returns the last count.
    /// Waits (`timeout` at most) until the metric `sample` is there and `wanted` of its value;
    /// gives its last value either way (0 when it never appeared), for the caller to judge.
    pub(crate) fn wait_for_metric(
        &self,
        sample: &str,
        timeout: Duration,
        wanted: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(sample);
            if value.is_some_and(&wanted) || Instant::now() > deadline {
                return value.unwrap_or(0.0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn wait_for_count(&self, sql: &str, expected: i64, timeout: Duration) -> i64 {
        self.wait_for_count_where(sql, |count| count >= expected, timeout)
    }

    /// Waits (`timeout` at most) until the count `sql` gives is `done`; returns the last count.
    pub(crate) fn wait_for_count_where(
        &self,
        sql: &str,
        done: impl Fn(i64) -> bool,
        timeout: Duration,
    ) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count(sql);
            if done(count) || Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Twinlake {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal blocking HTTP helpers, so that tests need no async runtime of their own for HTTP.
pub(crate) mod reqwest {
    pub(crate) fn blocking_get(url: &str) -> Option<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async { ::reqwest::get(url).await.ok()?.text().await.ok() })
    }

    /// DELETE; the status.
    pub(crate) fn blocking_delete(url: &str) -> u16 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = ::reqwest::Client::new().delete(url).send().await.unwrap();
            response.status().as_u16()
        })
    }

    pub(crate) fn blocking_post(url: &str, request: &serde_json::Value) -> (u16, String) {
        let (status, body) = blocking_post_outcome(url, request);
        (status, body.unwrap())
    }

    /// The status, and the whole body or why it was cut short.
    pub(crate) fn blocking_post_outcome(
        url: &str,
        request: &serde_json::Value,
    ) -> (u16, Result<String, String>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = ::reqwest::Client::new()
                .post(url)
                .json(request)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.map_err(|e| format!("{e:?}")))
        })
    }
}

/// How a query over HTTP ended: its status, and its whole body or why the body was cut short.
pub(crate) fn query_outcome(http: &str, sql: &str) -> (u16, Result<String, String>) {
    let request = serde_json::json!({ "sql": sql, "format": "json" });
    reqwest::blocking_post_outcome(&format!("{http}/api/v1/query"), &request)
}

/// One message for [`publish`].
pub(crate) struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
    pub(crate) qos: QoS,
}

pub(crate) fn message(topic: &str, payload: &str, retain: bool, qos: u8) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.as_bytes().to_vec(),
        retain,
        qos: match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
    }
}

/// Publishes the messages in order with a real MQTT client and waits until the broker has
/// acknowledged every QoS 1/2 message.
pub(crate) fn publish(mqtt_url: &str, messages: Vec<Message>) {
    // The gateway `main`, on Twinlake's endpoint (a broker without passwords ignores it).
    publish_as(mqtt_url, "main", messages);
}

/// [`publish`] as `gateway` (its username, which Twinlake's endpoint files `te/…` under).
pub(crate) fn publish_as(mqtt_url: &str, gateway: &str, messages: Vec<Message>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let url = url_parts(mqtt_url);
        let mut options = MqttOptions::new(format!("e2e-publisher-{}", free_port()), url.0, url.1);
        options
            .set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024)
            .set_inflight(100)
            .set_credentials(gateway, "");
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let expected = messages.iter().filter(|m| m.qos != QoS::AtMostOnce).count();
        let sender = tokio::spawn(async move {
            for m in messages {
                client
                    .publish(m.topic, m.qos, m.retain, m.payload)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < expected {
            match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher lost its connection: {e}"),
                Err(_) => panic!("the broker acknowledged only {acked} of {expected} messages"),
            }
        }
        let client = sender.await.unwrap();
        client.disconnect().await.unwrap();
        while let Ok(Ok(event)) =
            tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await
        {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    });
}

pub(crate) fn url_parts(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("mqtt://").unwrap();
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

/// A moto S3 server on a free loopback port with one bucket, stopped on drop.
pub(crate) struct Moto {
    pub(crate) port: u16,
    child: Child,
}

impl Moto {
    pub(crate) fn start(bucket: &str) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto must be installed: pip install 'moto[s3]' flask flask-cors (scripts/test does it)");
        wait_for_port(port, "moto");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = runtime.block_on(async {
            ::reqwest::Client::new()
                .put(format!("http://127.0.0.1:{port}/{bucket}"))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "creating bucket {bucket}: {status}");
        Self { port, child }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder that can be cut and restored, to take a server away from Twinlake for a
/// while: when down, new connections are refused and open ones are closed.
pub(crate) struct TcpProxy {
    pub(crate) port: u16,
    target: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    /// Requests have this header renamed on the way: the server never sees it.
    hidden_header: Option<&'static [u8]>,
    /// The next requests whose first line holds this text reach the server, but their
    /// connection is cut before the answer comes back: the client cannot tell whether they
    /// happened. The count says how many more.
    lost_answers: LostAnswers,
    /// While set, bytes are swallowed both ways: requests hang, as behind a dead route.
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests answered 403 Forbidden at once, without reaching the server.
    refused: Refused,
}

impl TcpProxy {
    pub(crate) fn start(target: u16) -> Self {
        Self::start_hiding(target, None)
    }

    /// Forwards plain-HTTP requests without their `If-None-Match` header, like an S3-compatible
    /// store that ignores conditional writes.
    pub(crate) fn start_ignoring_conditional_writes(target: u16) -> Self {
        Self::start_hiding(target, Some(b"if-none-match"))
    }

    fn start_hiding(target: u16, hidden_header: Option<&'static [u8]>) -> Self {
        let mut proxy = Self {
            port: free_port(),
            target,
            up: Default::default(),
            connections: Default::default(),
            acceptor: None,
            hidden_header,
            lost_answers: Default::default(),
            blackhole: Default::default(),
            refused: Default::default(),
        };
        proxy.set_up(true);
        proxy
    }

    /// Lets the next `count` requests whose first line starts with `method` and holds `text`
    /// reach the server, and cuts their connection before the answer.
    pub(crate) fn lose_answers_to(&self, method: &'static [u8], text: &'static [u8], count: usize) {
        *self.lost_answers.lock().unwrap() = (Some((method, text)), count);
    }

    /// How many answers the proxy was asked to lose and has not lost yet.
    pub(crate) fn answers_still_to_lose(&self) -> usize {
        self.lost_answers.lock().unwrap().1
    }

    /// The flags of a lake on S3 under `prefix` of bucket `twinlake`, reached through this proxy
    /// with moto's credentials.
    pub(crate) fn s3_flags(&self, prefix: &str) -> Vec<String> {
        [
            "--store-url",
            &format!("s3://twinlake/{prefix}"),
            "--s3-endpoint",
            &format!("http://127.0.0.1:{}", self.port),
            "--s3-allow-http",
            "true",
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "test",
            "--s3-secret-access-key",
            "testtesttest",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Answers the requests whose first line starts with `method` and holds `text` with
    /// 403 Forbidden (an error no client retries), until `None`.
    pub(crate) fn refuse(&self, request: Option<RequestMatch>) {
        *self.refused.lock().unwrap() = request;
    }

    /// Swallows every byte both ways (requests hang until the client gives up) until lifted;
    /// lifting it closes the hung connections, so clients connect again.
    pub(crate) fn set_blackhole(&self, on: bool) {
        self.blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            for stream in self.connections.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub(crate) fn set_up(&mut self, up: bool) {
        use std::sync::atomic::Ordering;
        if !up {
            self.up.store(false, Ordering::SeqCst);
            // Wake the acceptor so that it sees the flag and drops the listener.
            let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
            if let Some(acceptor) = self.acceptor.take() {
                acceptor.join().unwrap();
            }
            for stream in self.connections.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (flag, connections, target, hidden) = (
            std::sync::Arc::clone(&self.up),
            std::sync::Arc::clone(&self.connections),
            self.target,
            self.hidden_header,
        );
        let faults = Cut {
            lost_answers: std::sync::Arc::clone(&self.lost_answers),
            armed: Default::default(),
            blackhole: std::sync::Arc::clone(&self.blackhole),
            refused: std::sync::Arc::clone(&self.refused),
        };
        self.acceptor = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if !flag.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) =
                    (client, std::net::TcpStream::connect(("127.0.0.1", target)))
                else {
                    continue;
                };
                let mut open = connections.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                // Each connection arms its own cut; the rest is the proxy's.
                let cut = Cut {
                    armed: Default::default(),
                    ..faults.clone()
                };
                let requests = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Filter::Requests(hidden, cut.clone()),
                );
                let answers = (server, client, Filter::Answers(cut));
                for (from, to, filter) in [requests, answers] {
                    std::thread::spawn(move || forward(from, to, filter));
                }
            }
        }));
    }
}

/// The request text whose answers are to be lost, and how many more.
type LostAnswers = std::sync::Arc<std::sync::Mutex<(Option<RequestMatch>, usize)>>;

/// Requests whose first line starts with a method and holds some text.
pub(crate) type RequestMatch = (&'static [u8], &'static [u8]);

type Refused = std::sync::Arc<std::sync::Mutex<Option<RequestMatch>>>;

/// Whether the first line of `chunk` (a request's start) is one `request` describes.
fn matches(chunk: &[u8], (method, text): RequestMatch) -> bool {
    let first_line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
    first_line.starts_with(method) && first_line.windows(text.len()).any(|w| w == text)
}

/// One connection's part in the proxy's faults: losing answers (armed once a request to lose
/// went to the server) and the blackhole.
#[derive(Clone)]
struct Cut {
    lost_answers: LostAnswers,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: Refused,
}

impl Cut {
    /// Arms the cut when `chunk` starts a request to lose.
    fn watch(&self, chunk: &[u8]) {
        let mut lost = self.lost_answers.lock().unwrap();
        if let (Some(request), remaining @ 1..) = (lost.0, lost.1)
            && matches(chunk, request)
        {
            lost.1 = remaining - 1;
            self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a forwarding direction does to what passes.
enum Filter {
    /// Client to server: rename a header (same length, so nothing else moves), watch for
    /// requests whose answer is to be lost.
    Requests(Option<&'static [u8]>, Cut),
    /// Server to client: drop the answer and cut both ways once the cut is armed.
    Answers(Cut),
}

/// Copies bytes until either side closes.
fn forward(mut from: std::net::TcpStream, mut to: std::net::TcpStream, filter: Filter) {
    use std::io::{Read, Write};
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 {
            break;
        }
        let chunk = &mut buffer[..read];
        let (Filter::Requests(_, cut) | Filter::Answers(cut)) = &filter;
        if cut.blackhole.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        match &filter {
            Filter::Requests(hide, cut) => {
                if let Some(name) = hide {
                    for at in 0..chunk.len().saturating_sub(name.len()) {
                        if chunk[at..at + name.len()].eq_ignore_ascii_case(name) {
                            chunk[at..at + 2].copy_from_slice(b"x-");
                        }
                    }
                }
                if cut
                    .refused
                    .lock()
                    .unwrap()
                    .is_some_and(|r| matches(chunk, r))
                {
                    let refusal =
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = from.write_all(refusal);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    return;
                }
                cut.watch(chunk);
            }
            Filter::Answers(cut) if cut.armed() => {
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
                return;
            }
            Filter::Answers(_) => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_up(false);
    }
}

/// An MQTT 3.1.1 broker played packet by packet, for what a real broker cannot be made to do on
/// cue (refuse a subscription, drop a session at a chosen moment).
pub(crate) struct ScriptedBroker {
    listener: TcpListener,
}

/// MQTT control packet types the scripts read.
pub(crate) const PUBACK: u8 = 4;
pub(crate) const SUBSCRIBE: u8 = 8;

impl ScriptedBroker {
    pub(crate) fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub(crate) fn url(&self) -> String {
        let port = self.listener.local_addr().unwrap().port();
        format!("mqtt://127.0.0.1:{port}")
    }

    /// The next client's connection, its CONNECT answered with `session_present`.
    pub(crate) fn accept(&self, session_present: bool) -> ScriptedConnection {
        let (stream, _) = self.listener.accept().unwrap();
        let mut connection = ScriptedConnection { stream };
        let (kind, _) = connection
            .read_packet(Duration::from_secs(40))
            .expect("CONNECT");
        assert_eq!(kind, 1, "CONNECT first");
        connection.write(&[0x20, 0x02, u8::from(session_present), 0x00]);
        connection
    }
}

pub(crate) struct ScriptedConnection {
    stream: std::net::TcpStream,
}

impl ScriptedConnection {
    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// The next packet other than a ping (answered) within `wait`, as (type, body).
    pub(crate) fn next(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (kind, body) = self.read_packet(left)?;
            if kind == 12 {
                self.write(&[0xd0, 0x00]);
                continue;
            }
            return Some((kind, body));
        }
    }

    /// Answers the next SUBSCRIBE with `code` (0x01 granted, 0x80 refused); false when none
    /// came within `wait`.
    pub(crate) fn answer_subscribe(&mut self, code: u8, wait: Duration) -> bool {
        let Some((kind, body)) = self.next(wait) else {
            return false;
        };
        assert_eq!(kind, SUBSCRIBE, "SUBSCRIBE expected");
        self.write(&[0x90, 0x03, body[0], body[1], code]);
        true
    }

    pub(crate) fn publish_qos1(&mut self, topic: &str, payload: &str, packet_id: u16) {
        let mut length = 2 + topic.len() + 2 + payload.len();
        let mut packet = vec![0x32];
        loop {
            let byte = (length % 128) as u8;
            length /= 128;
            if length == 0 {
                packet.push(byte);
                break;
            }
            packet.push(byte | 0x80);
        }
        packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        packet.extend_from_slice(topic.as_bytes());
        packet.extend_from_slice(&packet_id.to_be_bytes());
        packet.extend_from_slice(payload.as_bytes());
        self.write(&packet);
    }

    /// One packet as (type, body); None when nothing whole came within `wait`.
    fn read_packet(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        use std::io::Read;
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut kind = [0u8; 1];
        self.stream.read_exact(&mut kind).ok()?;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut length, mut shift) = (0usize, 0);
        loop {
            let mut byte = [0u8; 1];
            self.stream.read_exact(&mut byte).unwrap();
            length |= usize::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).unwrap();
        Some((kind[0] >> 4, body))
    }
}
