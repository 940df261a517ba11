//! `twinlake simulate`: a fleet of thin-edge devices in one process.
//!
//! The fleet is what a site gateway running thin-edge publishes for the vehicles behind it:
//! depots as child devices of the main device, trucks as child devices of their depot, sensors
//! as child devices of their truck (every second sensor with a nested probe), and services on
//! each truck, all registered with retained messages and `@parent`. Trucks carry twin data
//! (model, capacity, firmware, home depot) and send a 10-value grouped reading per round with
//! plausible physics; engine overheat and low fuel raise alarms that clear again; doors, trips,
//! refuelling and firmware updates are events; services report health and sometimes go down.
//! With `--late` and `--missing`, trucks lose their link now and then and send what they
//! measured meanwhile in one late batch, and values go missing, as in TSBS's IoT data.
//! With the same `--seed` (and `--start`) the same messages are published.
//!
//! With `--gateways N` the fleet is what N thin-edge gateways forward instead: every truck is a
//! gateway of its own (`truck0001`), its main device the truck itself (with the truck's twin
//! data, and its depot as the twin fragment `depot`, which changes as trucks move between
//! depots), its sensors and probe child devices and its services as before, each gateway on an
//! MQTT connection of its own (client id = gateway id) publishing under
//! `twinlake/<gateway>/te/...`, as its bridge would.

use std::time::Duration;

use clap::{Args, Parser};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use tokio::time::Instant;
use twinlake_model::Timestamp;

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Number of trucks, as child devices of one site gateway.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Number of trucks, each a thin-edge gateway with its own MQTT connection (instead of
    /// --devices).
    #[arg(long, conflicts_with = "devices")]
    gateways: Option<usize>,
    /// With --gateways: the chance per truck and round that it moves to another depot.
    #[arg(long, default_value_t = 0.0005, value_parser = parse_share)]
    depot_moves: f64,
    /// Sensors (child devices) per truck; every second one has a nested probe.
    #[arg(long, default_value_t = 2)]
    children_per_device: usize,
    /// Services on every truck, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tedge-agent,collectd")]
    services: Vec<String>,
    /// Trucks per depot.
    #[arg(long, default_value_t = 5)]
    devices_per_depot: usize,
    /// Messages per second across the fleet; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long to publish, e.g. 30s, 5m, 1h; 0 runs until Ctrl-C.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    duration: Duration,
    /// Stop after this many rounds (one reading of every device per round) instead.
    #[arg(long)]
    rounds: Option<u64>,
    #[arg(
        long,
        env = "TWINLAKE_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    mqtt_url: String,
    /// MQTT QoS of telemetry (registrations, twin and health are always QoS 1, alarms QoS 2 as
    /// thin-edge's docs publish them, downgraded to this QoS when it is lower).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Seed of every random choice: the same seed gives the same fleet and readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time of the first round (RFC 3339); rounds then advance by --step instead of following
    /// the clock, so the data is fully reproducible.
    #[arg(long)]
    start: Option<String>,
    /// Simulated time between rounds, with --start.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    step: Duration,
    /// thin-edge's topic root.
    #[arg(long, default_value = "te")]
    topic_root: String,
    /// Chance per truck and round that the truck loses its link for 10–120 rounds: its
    /// readings and events wait on the truck and arrive in one late batch when it is back, out
    /// of order with the rest of the fleet (TSBS's out-of-order data). Alarms, twin and health
    /// stay on time, as retained state is.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    late: f64,
    /// Chance that a value is missing from a reading (a sensor that did not answer; TSBS's
    /// missing data).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    missing: f64,
    /// These trucks (e.g. truck0007) stop reporting, as gateways that lost power, for the last
    /// tenth of --rounds: nothing more comes from them (the rest of the fleet is unchanged).
    #[arg(long, value_delimiter = ',', requires = "rounds")]
    silent: Vec<String>,
    /// Chance per truck and round that it reports a service due: a minor alarm `service_due`
    /// that stays active for 30–300 rounds, until the service is done, as a fleet's alarms
    /// do. Drawn from random numbers of its own: the rest of the data is the same whatever
    /// this is (the benchmarks and tests set 0).
    #[arg(long, default_value_t = 0.002, value_parser = parse_share)]
    service_alarms: f64,
}

impl SimulateArgs {
    /// The simulator's own defaults with these command-line options on top.
    pub(crate) fn parse_options(options: &[&str]) -> Result<Self, String> {
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            simulate: SimulateArgs,
        }
        let arguments = std::iter::once("simulate").chain(options.iter().copied());
        Command::try_parse_from(arguments)
            .map(|command| command.simulate)
            .map_err(|e| e.to_string())
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share between 0 and 1")),
    }
}

const MODELS: [(&str, f64); 4] = [
    ("Volvo FH16", 26_000.0),
    ("Scania R500", 24_000.0),
    ("MAN TGX", 22_000.0),
    ("DAF XF", 20_000.0),
];

/// One message to publish.
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) payload: String,
    retain: bool,
    qos: QoS,
}

struct Truck {
    id: String,
    /// The depot it belongs to now (1-based).
    depot: usize,
    sensors: Vec<Sensor>,
    speed: f64,
    heading: f64,
    lat: f64,
    lon: f64,
    engine_temperature: f64,
    fuel: f64,
    /// Share of the capacity in use.
    load: f64,
    capacity: f64,
    firmware_patch: u32,
    overheating: bool,
    low_fuel: bool,
    /// Rounds until a service due is done (its alarm cleared).
    service_due: Option<u32>,
    stopped_rounds: u32,
    services_down: Vec<bool>,
    /// Rounds left without a link; readings and events meanwhile wait in `backlog`.
    offline_rounds: u32,
    backlog: Vec<Outgoing>,
}

struct Sensor {
    id: String,
    probe: Option<String>,
    temperature: f64,
    humidity: f64,
}

/// How the fleet's entities reach the broker.
enum Layout {
    /// Child devices of one main device, under plain `<root>/...` topics.
    Site,
    /// Every truck a gateway: `twinlake/<truck>/<root>/...`; depot moves drawn from their own
    /// random numbers, so the rest of the fleet is the same as in the site layout.
    Gateways { moves: Box<StdRng>, chance: f64 },
}

/// The first topic segment of what gateways forward (Twinlake's `--fleet-prefix`).
const FLEET_PREFIX: &str = "twinlake";

pub(crate) struct Fleet {
    layout: Layout,
    root: String,
    trucks: Vec<Truck>,
    depots: usize,
    trucks_per_depot: usize,
    services: Vec<String>,
    rng: StdRng,
    telemetry_qos: QoS,
    late: f64,
    missing: f64,
    /// These trucks send nothing from round `silent_from` on.
    silent: Vec<String>,
    silent_from: u64,
    rounds_done: u64,
    /// Services due: their own random numbers, so the rest of the fleet is the same without.
    service_alarms: f64,
    service_rng: StdRng,
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Fleet {
    pub(crate) fn new(args: &SimulateArgs) -> Self {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let devices = args.gateways.unwrap_or(args.devices);
        let layout = match args.gateways {
            None => Layout::Site,
            Some(_) => Layout::Gateways {
                moves: Box::new(StdRng::seed_from_u64(args.seed.wrapping_add(1))),
                chance: args.depot_moves,
            },
        };
        let trucks = (0..devices)
            .map(|t| {
                let id = format!("truck{:04}", t + 1);
                let capacity = MODELS[t % MODELS.len()].1;
                let sensors = (0..args.children_per_device)
                    .map(|s| Sensor {
                        id: format!("{id}-sensor{}", s + 1),
                        probe: (s % 2 == 1).then(|| format!("{id}-sensor{}-probe", s + 1)),
                        temperature: rng.random_range(2.0..8.0),
                        humidity: rng.random_range(30.0..60.0),
                    })
                    .collect();
                Truck {
                    id,
                    depot: t / args.devices_per_depot.max(1) + 1,
                    sensors,
                    speed: rng.random_range(0.0..90.0),
                    heading: rng.random_range(0.0..std::f64::consts::TAU),
                    lat: 48.0 + rng.random_range(-1.0..1.0),
                    lon: 11.0 + rng.random_range(-1.0..1.0),
                    engine_temperature: rng.random_range(80.0..92.0),
                    fuel: rng.random_range(20.0..100.0),
                    load: rng.random_range(0.0..1.0),
                    capacity,
                    firmware_patch: rng.random_range(1..=3),
                    overheating: false,
                    low_fuel: false,
                    service_due: None,
                    stopped_rounds: 0,
                    services_down: vec![false; args.services.len()],
                    offline_rounds: 0,
                    backlog: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        Self {
            layout,
            root: args.topic_root.clone(),
            depots: devices.div_ceil(args.devices_per_depot.max(1)),
            trucks_per_depot: args.devices_per_depot.max(1),
            trucks,
            services: args.services.clone(),
            rng,
            telemetry_qos: qos_of(args.qos),
            late: args.late,
            silent: args.silent.clone(),
            silent_from: args.rounds.map_or(u64::MAX, |rounds| rounds - rounds / 10),
            rounds_done: 0,
            missing: args.missing,
            service_alarms: args.service_alarms,
            service_rng: StdRng::seed_from_u64(args.seed.wrapping_add(2)),
        }
    }

    /// Depots get consecutive trucks (truck0001–truck0005 in depot01, …), as fleets are
    /// usually provisioned site by site.
    fn depot_of(&self, truck: usize) -> usize {
        truck / self.trucks_per_depot + 1
    }

    fn retained(&self, topic: String, payload: serde_json::Value) -> Outgoing {
        Outgoing {
            topic: format!("{}/{topic}", self.root),
            payload: payload.to_string(),
            retain: true,
            qos: QoS::AtLeastOnce,
        }
    }

    fn live(&self, topic: String, payload: serde_json::Value) -> Outgoing {
        Outgoing {
            topic: format!("{}/{topic}", self.root),
            payload: payload.to_string(),
            retain: false,
            qos: self.telemetry_qos,
        }
    }

    /// Registrations, twin data and metadata: what thin-edge publishes retained at start.
    pub(crate) fn registrations(&self) -> Vec<Outgoing> {
        self.as_published(self.site_registrations())
    }

    fn site_registrations(&self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for depot in 1..=self.depots {
            out.push(self.retained(
                format!("device/depot{depot:02}//"),
                json!({"@type": "child-device", "name": format!("depot{depot:02}"), "type": "Depot"}),
            ));
        }
        for (index, truck) in self.trucks.iter().enumerate() {
            let id = &truck.id;
            let depot = format!("depot{:02}", self.depot_of(index));
            let (model, capacity) = MODELS[index % MODELS.len()];
            out.push(self.retained(
                format!("device/{id}//"),
                json!({"@type": "child-device", "@parent": format!("device/{depot}//"), "@id": format!("fleet-{id}"), "name": id, "type": "Truck"}),
            ));
            out.push(self.retained(format!("device/{id}///twin/model"), json!(model)));
            out.push(self.retained(
                format!("device/{id}///twin/capacity"),
                json!({"kg": capacity}),
            ));
            out.push(self.retained(format!("device/{id}///twin/firmware"), self.firmware(truck)));
            out.push(self.retained(format!("device/{id}///twin/home"), json!({"depot": depot})));
            out.push(self.retained(
                format!("device/{id}///m/telemetry/meta"),
                json!({
                    "engine.rpm": {"unit": "rpm"}, "engine.temperature": {"unit": "°C", "max": 120},
                    "engine.oil_pressure": {"unit": "bar"}, "fuel.level": {"unit": "%"}, "fuel.rate": {"unit": "l/h"},
                    "gps.lat": {"unit": "°"}, "gps.lon": {"unit": "°"}, "gps.alt": {"unit": "m"},
                    "gps.speed": {"unit": "km/h"}, "load": {"unit": "kg", "min": 0, "max": capacity}
                }),
            ));
            for sensor in &truck.sensors {
                out.push(self.retained(
                    format!("device/{}//", sensor.id),
                    json!({"@type": "child-device", "@parent": format!("device/{id}//"), "name": sensor.id, "type": "ColdChainSensor"}),
                ));
                if let Some(probe) = &sensor.probe {
                    out.push(self.retained(
                        format!("device/{probe}//"),
                        json!({"@type": "child-device", "@parent": format!("device/{}//", sensor.id), "name": probe, "type": "Probe"}),
                    ));
                }
            }
            for service in &self.services {
                out.push(self.retained(
                    format!("device/{id}/service/{service}"),
                    json!({"@type": "service", "@parent": format!("device/{id}//"), "name": service, "type": "service"}),
                ));
            }
        }
        out
    }

    fn firmware(&self, truck: &Truck) -> serde_json::Value {
        json!({"name": "vehicle-fw", "version": format!("2.3.{}", truck.firmware_patch)})
    }

    /// One round: every device reports once at `at`, `dt` seconds after the last round.
    pub(crate) fn round(&mut self, at: Timestamp, dt: f64) -> Vec<Outgoing> {
        let time = at.to_rfc3339();
        let mut out = Vec::new();
        let silence = self.rounds_done >= self.silent_from;
        self.rounds_done += 1;
        for index in 0..self.trucks.len() {
            if silence && self.silent.contains(&self.trucks[index].id) {
                // Still drawn, so that the other trucks' readings stay as they were.
                self.advance(index, dt, &time, &mut Vec::new());
                continue;
            }
            self.advance(index, dt, &time, &mut out);
        }
        out.extend(self.depot_moves(silence));
        self.as_published(out)
    }

    /// With gateways: trucks that move to another depot this round, as a new value of their
    /// `depot` twin fragment.
    fn depot_moves(&mut self, silence: bool) -> Vec<Outgoing> {
        let depots = self.depots;
        let Layout::Gateways { moves, chance } = &mut self.layout else {
            return Vec::new();
        };
        if depots < 2 || *chance <= 0.0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for truck in &mut self.trucks {
            if !moves.random_bool(*chance) || (silence && self.silent.contains(&truck.id)) {
                continue;
            }
            let next = (truck.depot % depots) + 1;
            truck.depot = next;
            out.push(Outgoing {
                topic: format!("{}/device/{}///twin/home", self.root, truck.id),
                payload: json!({"depot": format!("depot{next:02}")}).to_string(),
                retain: true,
                qos: QoS::AtLeastOnce,
            });
        }
        out
    }

    /// The messages as this layout publishes them (the site layout's own, or each truck's
    /// gateway's).
    fn as_published(&self, messages: Vec<Outgoing>) -> Vec<Outgoing> {
        match self.layout {
            Layout::Site => messages,
            Layout::Gateways { .. } => messages
                .into_iter()
                .filter_map(|message| self.as_gateway(message))
                .collect(),
        }
    }

    /// A site message as its truck's gateway publishes it: the truck is the gateway's main
    /// device (which thin-edge never registers), its sensors and services are the gateway's
    /// own (`truck0001-sensor1` is `device/sensor1//`), and its depot is a twin fragment.
    /// Depots are no devices: their registrations are dropped.
    fn as_gateway(&self, message: Outgoing) -> Option<Outgoing> {
        let rest = message
            .topic
            .strip_prefix(&format!("{}/device/", self.root))?;
        let (device, channel) = rest.split_once('/')?;
        let (truck, local) = match device.split_once('-') {
            Some((truck, part)) => (truck, part),
            None => (device, "main"),
        };
        if truck.starts_with("depot") {
            return None;
        }
        let mut payload = message.payload;
        let mut channel = channel.to_owned();
        let registration = channel == "/"
            || (channel.starts_with("service/") && channel.matches('/').count() == 1);
        if channel == "/" && local == "main" {
            return None;
        }
        if registration {
            let mut registration: serde_json::Value = serde_json::from_str(&payload).ok()?;
            if let Some(parent) = registration.get("@parent").and_then(|p| p.as_str()) {
                let parent_device = parent.strip_prefix("device/")?.trim_end_matches('/');
                let local_parent = parent_device.split_once('-').map_or("main", |(_, p)| p);
                registration["@parent"] = json!(format!("device/{local_parent}//"));
            }
            // Names are the gateway's own: `sensor1`, not the site's `truck0001-sensor1`.
            if let Some(name) = registration.get("name").and_then(|n| n.as_str())
                && let Some(local_name) = name.strip_prefix(&format!("{truck}-"))
            {
                registration["name"] = json!(local_name);
            }
            payload = registration.to_string();
        }
        if channel == "//twin/home" {
            let home: serde_json::Value = serde_json::from_str(&payload).ok()?;
            channel = "//twin/depot".to_owned();
            payload = home.get("depot")?.to_string();
        }
        Some(Outgoing {
            topic: format!(
                "{FLEET_PREFIX}/{truck}/{}/device/{local}/{channel}",
                self.root
            ),
            payload,
            ..message
        })
    }

    fn advance(&mut self, index: usize, dt: f64, time: &str, out: &mut Vec<Outgoing>) {
        let rng = &mut self.rng;
        let mut events = Vec::new();
        let truck = &mut self.trucks[index];
        let id = truck.id.clone();
        if truck.offline_rounds > 0 {
            truck.offline_rounds -= 1;
            if truck.offline_rounds == 0 {
                out.append(&mut truck.backlog);
            }
        } else if self.late > 0.0 && rng.random_bool(self.late) {
            truck.offline_rounds = rng.random_range(10..=120);
        }
        let offline = truck.offline_rounds > 0;
        let mut held = Vec::new();

        // Driving: stops now and then (doors open, load changes), otherwise a bounded random walk.
        if truck.stopped_rounds > 0 {
            truck.stopped_rounds -= 1;
            truck.speed = 0.0;
            if truck.stopped_rounds == 0 {
                events.push((
                    "trip_started",
                    json!({"text": "Trip started", "time": time}),
                ));
            }
        } else if rng.random_bool(0.02) {
            // Mostly short stops; one in ten is a long rest.
            truck.stopped_rounds = if rng.random_bool(0.1) {
                rng.random_range(20..90)
            } else {
                rng.random_range(3..12)
            };
            truck.speed = 0.0;
            truck.load = rng.random_range(0.0..1.0);
            events.push((
                "door_opened",
                json!({"text": "Rear door opened", "time": time, "door": "rear"}),
            ));
        } else {
            truck.speed = (truck.speed + rng.random_range(-8.0..8.0)).clamp(5.0, 110.0);
        }
        truck.heading += rng.random_range(-0.2..0.2);
        let km = truck.speed * dt / 3600.0;
        truck.lat += km / 111.0 * truck.heading.cos();
        truck.lon += km / 74.0 * truck.heading.sin();
        // Engine heat follows speed and load, with the odd excursion that trips the alarm.
        let target = 78.0
            + truck.speed * 0.1
            + truck.load * 12.0
            + if rng.random_bool(0.01) { 30.0 } else { 0.0 };
        truck.engine_temperature +=
            (target - truck.engine_temperature) * 0.3 + rng.random_range(-1.0..1.0);
        let rate = if truck.speed > 0.0 {
            18.0 + truck.load * 14.0
        } else {
            1.5
        };
        truck.fuel = (truck.fuel - rate * dt / 3600.0 * 0.5).max(0.0);
        if truck.fuel < 4.0 {
            truck.fuel = 100.0;
            events.push((
                "refuelled",
                json!({"text": "Tank refilled", "time": time, "litres": 600}),
            ));
        }
        let rpm = if truck.speed > 0.0 {
            900.0 + truck.speed * 14.0 + rng.random_range(-50.0..50.0)
        } else {
            650.0
        };
        let mut reading = json!({
            "time": time,
            "engine": {"rpm": round(rpm, 0), "temperature": round(truck.engine_temperature, 1), "oil_pressure": round(2.0 + rpm / 2500.0, 2)},
            "fuel": {"level": round(truck.fuel, 2), "rate": round(rate, 1)},
            "gps": {"lat": round(truck.lat, 6), "lon": round(truck.lon, 6), "alt": round(500.0 + truck.lat.fract() * 100.0, 1), "speed": round(truck.speed, 1)},
            "load": round(truck.load * truck.capacity, 0)
        });
        drop_missing(&mut reading, self.missing, rng);
        send(
            out,
            &mut held,
            offline,
            Outgoing {
                topic: format!("{}/device/{id}///m/telemetry", self.root),
                payload: reading.to_string(),
                retain: false,
                qos: self.telemetry_qos,
            },
        );

        // Alarms: raised past a threshold, cleared with hysteresis, retained like thin-edge's.
        let mut alarms = Vec::new();
        if !truck.overheating && truck.engine_temperature > 105.0 {
            truck.overheating = true;
            alarms.push(("engine_overheat", Some(json!({"severity": "major", "text": format!("Engine temperature {:.1} °C", truck.engine_temperature), "time": time}))));
        } else if truck.overheating && truck.engine_temperature < 95.0 {
            truck.overheating = false;
            alarms.push(("engine_overheat", None));
        }
        if !truck.low_fuel && truck.fuel < 10.0 {
            truck.low_fuel = true;
            alarms.push((
                "low_fuel",
                Some(json!({"severity": "warning", "text": "Fuel below 10 %", "time": time})),
            ));
        } else if truck.low_fuel && truck.fuel > 20.0 {
            truck.low_fuel = false;
            alarms.push(("low_fuel", None));
        }
        match truck.service_due {
            Some(0) | Some(1) => {
                truck.service_due = None;
                alarms.push(("service_due", None));
            }
            Some(rounds) => truck.service_due = Some(rounds - 1),
            None if self.service_alarms > 0.0
                && self.service_rng.random_bool(self.service_alarms) =>
            {
                truck.service_due = Some(self.service_rng.random_range(30..=300));
                alarms.push((
                    "service_due",
                    Some(json!({"severity": "minor", "text": "Service due: brakes and tyres", "time": time})),
                ));
            }
            None => {}
        }

        // Firmware updates are rare; they change the twin and leave an event.
        let mut firmware = None;
        if rng.random_bool(0.002) {
            truck.firmware_patch += 1;
            firmware = Some(truck.firmware_patch);
            events.push(("firmware_updated", json!({"text": "Firmware updated", "time": time, "version": format!("2.3.{}", truck.firmware_patch)})));
        }

        let mut sensor_readings = Vec::new();
        for sensor in &mut truck.sensors {
            sensor.temperature = (sensor.temperature
                + rng.random_range(-0.3..0.3)
                + if truck.stopped_rounds > 0 { 0.2 } else { -0.05 })
            .clamp(-25.0, 25.0);
            sensor.humidity = (sensor.humidity + rng.random_range(-1.0..1.0)).clamp(10.0, 95.0);
            let vibration = truck.speed / 40.0;
            let mut reading = json!({
                "time": time,
                "temperature": round(sensor.temperature, 2),
                "humidity": round(sensor.humidity, 1),
                "vibration": {"x": round(vibration * rng.random_range(0.8..1.2), 3), "y": round(vibration * rng.random_range(0.8..1.2), 3), "z": round(9.81 + vibration * rng.random_range(-0.1..0.1), 3)}
            });
            drop_missing(&mut reading, self.missing, rng);
            sensor_readings.push((sensor.id.clone(), reading));
            if let Some(probe) = &sensor.probe {
                let mut reading = json!({"time": time, "temperature": round(sensor.temperature + rng.random_range(-0.5..0.5), 2)});
                drop_missing(&mut reading, self.missing, rng);
                sensor_readings.push((probe.clone(), reading));
            }
        }

        let mut health = Vec::new();
        for (service_index, down) in truck.services_down.iter_mut().enumerate() {
            let flip = if *down {
                rng.random_bool(0.3)
            } else {
                rng.random_bool(0.003)
            };
            if flip {
                *down = !*down;
                health.push((service_index, *down));
            }
        }
        let mut collectd = json!({"time": time, "cpu": {"percent-active": round(rng.random_range(2.0..40.0), 1)}, "memory": {"percent-used": round(rng.random_range(20.0..70.0), 1)}});
        drop_missing(&mut collectd, self.missing, rng);

        for (event_type, payload) in events {
            let event = self.live(format!("device/{id}///e/{event_type}"), payload);
            send(out, &mut held, offline, event);
        }
        for (alarm_type, payload) in alarms {
            let qos = match self.telemetry_qos {
                QoS::AtMostOnce => QoS::AtMostOnce,
                _ => QoS::ExactlyOnce,
            };
            out.push(Outgoing {
                topic: format!("{}/device/{id}///a/{alarm_type}", self.root),
                payload: payload.map(|p| p.to_string()).unwrap_or_default(),
                retain: true,
                qos,
            });
        }
        if firmware.is_some() {
            let payload = self.firmware(&self.trucks[index]);
            out.push(self.retained(format!("device/{id}///twin/firmware"), payload));
        }
        for (sensor, payload) in sensor_readings {
            let reading = self.live(format!("device/{sensor}///m/environment"), payload);
            send(out, &mut held, offline, reading);
        }
        if self.services.iter().any(|s| s == "collectd") {
            let reading = self.live(format!("device/{id}/service/collectd/m/"), collectd);
            send(out, &mut held, offline, reading);
        }
        for (service_index, down) in health {
            let service = &self.services[service_index];
            let status = if down {
                // thin-edge's own "down" has no time; with one, a simulated history keeps its
                // order when it is ingested faster than it happened.
                json!({"status": "down", "time": time})
            } else {
                json!({"status": "up", "pid": 1000 + service_index, "time": time})
            };
            out.push(self.retained(
                format!("device/{id}/service/{service}/status/health"),
                status,
            ));
        }
        self.trucks[index].backlog.append(&mut held);
    }

    /// What trucks still offline hold when the simulation ends: sent late rather than lost.
    pub(crate) fn backlogs(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for truck in &mut self.trucks {
            truck.offline_rounds = 0;
            out.append(&mut truck.backlog);
        }
        self.as_published(out)
    }

    /// Every service reports up a second before the first round: a service that goes down in
    /// the first round then has a clear order of statuses, not two at the same time.
    pub(crate) fn initial_health(&self, first_round: Timestamp) -> Vec<Outgoing> {
        let time =
            Timestamp::from_unix_nanos(first_round.unix_nanos() - 1_000_000_000).to_rfc3339();
        let mut out = Vec::new();
        for truck in &self.trucks {
            for (index, service) in self.services.iter().enumerate() {
                out.push(self.retained(
                    format!("device/{}/service/{service}/status/health", truck.id),
                    json!({"status": "up", "pid": 1000 + index, "time": time}),
                ));
            }
        }
        self.as_published(out)
    }
}

/// A live message goes out now, or waits on the truck while it is offline.
fn send(out: &mut Vec<Outgoing>, held: &mut Vec<Outgoing>, offline: bool, message: Outgoing) {
    if offline {
        held.push(message);
    } else {
        out.push(message);
    }
}

/// Removes each value of a reading with chance `missing`; its time stays. No draw at all when
/// `missing` is 0, so a seed gives the same fleet as before missing values existed.
fn drop_missing(reading: &mut serde_json::Value, missing: f64, rng: &mut StdRng) {
    if missing <= 0.0 {
        return;
    }
    let Some(fields) = reading.as_object_mut() else {
        return;
    };
    fields.retain(|key, value| {
        if key == "time" {
            return true;
        }
        if value.is_object() {
            drop_missing(value, missing, rng);
            return value.as_object().is_some_and(|group| !group.is_empty());
        }
        !rng.random_bool(missing)
    });
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The MQTT connections a simulation publishes on: one for a site, or one per gateway (client
/// id = the gateway id, as a thin-edge mapper's bridge connects) for a fleet of gateways.
struct Connections {
    endpoint: twinlake_ingest::MqttEndpoint,
    per_gateway: bool,
    clients: std::collections::HashMap<String, AsyncClient>,
    networks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    /// QoS 1 and 2 messages the broker has acknowledged, on every connection.
    acked: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Publish-to-acknowledged of every QoS 1 and 2 message sent once `measuring` is set: from
    /// its PUBLISH written to the socket to its PUBACK (or PUBREC) read, in microseconds.
    ack_latencies: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    measuring: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set when the simulation is done: a connection that fails then gives up.
    done: tokio::sync::watch::Sender<bool>,
}

/// Connection attempts in a row after which a connection gives up.
const CONNECT_ATTEMPTS: u32 = 30;

impl Connections {
    fn new(endpoint: twinlake_ingest::MqttEndpoint, per_gateway: bool) -> Self {
        Self {
            endpoint,
            per_gateway,
            clients: std::collections::HashMap::new(),
            networks: Vec::new(),
            acked: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            ack_latencies: std::sync::Arc::default(),
            measuring: std::sync::Arc::default(),
            done: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The connection of the gateway a topic is forwarded for (`twinlake/<gateway>/...`),
    /// opened at its first message; the one connection of a site.
    fn client_for(&mut self, topic: &str) -> AsyncClient {
        let id = match self.per_gateway {
            true => topic.split('/').nth(1).unwrap_or_default().to_owned(),
            false => self.endpoint.client_id.clone(),
        };
        if let Some(client) = self.clients.get(&id) {
            return client.clone();
        }
        // A gateway keeps 100 messages in flight, as thin-edge's bridge does; a site's one
        // connection carries the whole fleet.
        let (inflight, queue) = if self.per_gateway {
            (100, 200)
        } else {
            (1000, 10_000)
        };
        let mut options = MqttOptions::new(&id, &self.endpoint.host, self.endpoint.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        // A site is one gateway, `main`: on Twinlake's endpoint a connection's gateway is its
        // username (a broker without a password file ignores it).
        let site = (!self.per_gateway).then_some("main");
        if let Some(user) = self.endpoint.username.as_deref().or(site) {
            options.set_credentials(user, self.endpoint.password.clone().unwrap_or_default());
        }
        // Thousands of gateways connecting at once keep a broker busy for a while: a gateway's
        // connection waits, and tries again, as a bridge does; its session keeps what it sent
        // but had not seen acknowledged (`cleansession false`, as thin-edge's bridges).
        options.set_clean_session(!self.per_gateway);
        let (client, mut eventloop) = AsyncClient::new(options, queue);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(30);
        eventloop.set_network_options(network);
        let acked = std::sync::Arc::clone(&self.acked);
        let latencies = std::sync::Arc::clone(&self.ack_latencies);
        let measuring = std::sync::Arc::clone(&self.measuring);
        let done = self.done.subscribe();
        self.networks.push(tokio::spawn(async move {
            let mut failures = 0;
            let mut written = std::collections::HashMap::new();
            let acknowledged = |written: &mut std::collections::HashMap<u16, Instant>,
                                packet_id| {
                if let Some(at) = written.remove(&packet_id) {
                    let micros = Instant::now().duration_since(at).as_micros();
                    if let Ok(mut latencies) = latencies.lock() {
                        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                }
            };
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(packet_id)))
                        if packet_id != 0
                            && measuring.load(std::sync::atomic::Ordering::Relaxed) =>
                    {
                        written.insert(packet_id, Instant::now());
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        acknowledged(&mut written, ack.pkid);
                        acked.send_modify(|count| *count += 1);
                    }
                    Ok(Event::Incoming(Incoming::PubRec(rec))) => {
                        acknowledged(&mut written, rec.pkid);
                    }
                    Ok(Event::Incoming(Incoming::PubComp(_))) => {
                        acked.send_modify(|count| *count += 1);
                    }
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => failures = 0,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => {
                        failures += 1;
                        if *done.borrow() || failures >= CONNECT_ATTEMPTS {
                            return Err(format!("MQTT connection to the broker: {error}"));
                        }
                        tracing::debug!(%error, "MQTT connection failed; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
        self.clients.insert(id, client.clone());
        client
    }

    /// Waits (up to 60 s) until the broker has acknowledged `needs_ack` messages, then closes
    /// every connection. How many were acknowledged, whether that was all of them, and the
    /// publish-to-acknowledged latencies.
    async fn finish(self, needs_ack: u64) -> Result<(u64, bool, AckLatencies), String> {
        let mut acked = self.acked.subscribe();
        let all = tokio::time::timeout(
            Duration::from_secs(60),
            acked.wait_for(|count| *count >= needs_ack),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        let acknowledged = *acked.borrow();
        self.done.send_replace(true);
        for client in self.clients.values() {
            let _ = client.disconnect().await;
        }
        for network in self.networks {
            match network.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(error) => return Err(format!("MQTT task: {error}")),
            }
        }
        let latencies = self
            .ack_latencies
            .lock()
            .map(|mut latencies| AckLatencies::of(&mut latencies))
            .unwrap_or_default();
        Ok((acknowledged, all, latencies))
    }
}

/// Publish-to-acknowledged percentiles, in milliseconds.
#[derive(Debug, Default)]
struct AckLatencies {
    p50: f64,
    p99: f64,
    max: f64,
}

impl AckLatencies {
    fn of(micros: &mut [u32]) -> Self {
        micros.sort_unstable();
        let at = |q: f64| {
            let index = ((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1));
            micros.get(index).map_or(0.0, |&m| f64::from(m) / 1000.0)
        };
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

pub(crate) async fn simulate(args: SimulateArgs) -> Result<(), String> {
    let endpoint = twinlake_ingest::MqttEndpoint::parse(
        &args.mqtt_url,
        format!("twinlake-simulate-{}", args.seed),
    )
    .map_err(|e| e.to_string())?;
    let start = args
        .start
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| format!("--start: {e}"))?;
    let mut connections = Connections::new(endpoint, args.gateways.is_some());
    let (acked, measuring) = (
        connections.acked.subscribe(),
        std::sync::Arc::clone(&connections.measuring),
    );
    let mut fleet = Fleet::new(&args);
    let mut published = 0u64;
    let mut needs_ack = 0u64;
    let began = Instant::now();
    let mut publish = |message: Outgoing| {
        let client = connections.client_for(&message.topic);
        published += 1;
        if message.qos != QoS::AtMostOnce {
            needs_ack += 1;
        }
        async move {
            client
                .publish(message.topic, message.qos, message.retain, message.payload)
                .await
                .map_err(|e| format!("publishing: {e}"))
        }
    };
    let first_time = start.unwrap_or_else(Timestamp::now);
    let mut setup = fleet.registrations();
    setup.extend(fleet.initial_health(first_time));
    let setup_needs_ack = setup.iter().filter(|m| m.qos != QoS::AtMostOnce).count() as u64;
    for message in setup {
        publish(message).await?;
    }
    // Latencies are timed from here on: every gateway connecting and registering at once is a
    // burst, not the steady state the figure describes.
    let mut setup_acked = acked;
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        setup_acked.wait_for(|count| *count >= setup_needs_ack),
    )
    .await;
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let step = args.step.as_secs_f64();
    let mut round_index = 0u64;
    let mut telemetry = 0u64;
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    tracing::info!(
        trucks = fleet.trucks.len(),
        gateways = args.gateways.is_some(),
        depots = fleet.depots,
        rate = args.rate,
        "simulating"
    );
    loop {
        if args.rounds.is_some_and(|rounds| round_index >= rounds) {
            break;
        }
        if args.rounds.is_none() && !args.duration.is_zero() && began.elapsed() >= args.duration {
            break;
        }
        let (at, dt) = match start {
            Some(start) => (
                Timestamp::from_unix_nanos(
                    start.unix_nanos() + (round_index as f64 * step * 1e9) as i64,
                ),
                step,
            ),
            None => (Timestamp::now(), step),
        };
        for message in fleet.round(at, dt) {
            publish(message).await?;
            telemetry += 1;
            if let Some(pace) = pace {
                let due = began + pace.mul_f64(telemetry as f64);
                tokio::time::sleep_until(due).await;
            }
        }
        round_index += 1;
    }
    for message in fleet.backlogs() {
        publish(message).await?;
    }
    let (acknowledged, all_acknowledged, latency) = connections.finish(needs_ack).await?;
    let seconds = began.elapsed().as_secs_f64();
    tracing::info!(
        published,
        acknowledged,
        rounds = round_index,
        seconds = format!("{seconds:.1}"),
        per_second = format!("{:.0}", published as f64 / seconds),
        ack_p50_ms = format!("{:.1}", latency.p50),
        ack_p99_ms = format!("{:.1}", latency.p99),
        ack_max_ms = format!("{:.1}", latency.max),
        "simulation done"
    );
    if !all_acknowledged {
        return Err(format!(
            "the broker acknowledged {acknowledged} of {needs_ack} messages within 60 s"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(messages: &[Outgoing]) -> Vec<serde_json::Value> {
        messages
            .iter()
            .filter(|m| m.topic.ends_with("/m/telemetry"))
            .map(|m| serde_json::from_str(&m.payload).expect("the simulator writes JSON"))
            .collect()
    }

    fn run(options: &[&str], rounds: u64) -> Vec<Outgoing> {
        let args = SimulateArgs::parse_options(options).expect("valid options");
        let mut fleet = Fleet::new(&args);
        let start = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").expect("a time");
        let mut out = Vec::new();
        for round in 0..rounds {
            let at = Timestamp::from_unix_nanos(start.unix_nanos() + round as i64 * 60_000_000_000);
            out.extend(fleet.round(at, 60.0));
        }
        out.extend(fleet.backlogs());
        out
    }

    fn leaves(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(fields) => fields.values().map(leaves).sum(),
            _ => 1,
        }
    }

    #[test]
    fn every_truck_of_a_gateway_fleet_is_a_gateway_with_its_own_tree() {
        let args = SimulateArgs::parse_options(&["--gateways", "3"]).expect("valid options");
        let fleet = Fleet::new(&args);
        let setup = fleet.registrations();
        let topics: Vec<&str> = setup.iter().map(|m| m.topic.as_str()).collect();
        assert!(
            topics.iter().all(|t| t.starts_with("twinlake/truck000")),
            "{topics:?}"
        );
        // No registration of the main device (thin-edge makes none) nor of depots.
        assert!(!topics.contains(&"twinlake/truck0001/te/device/main//"));
        assert!(!topics.iter().any(|t| t.contains("/device/depot")));
        let payload = |topic: &str| {
            let message = setup.iter().find(|m| m.topic == topic).expect(topic);
            serde_json::from_str::<serde_json::Value>(&message.payload).expect("JSON")
        };
        assert_eq!(
            payload("twinlake/truck0002/te/device/main///twin/depot"),
            json!("depot01")
        );
        let sensor = payload("twinlake/truck0002/te/device/sensor1//");
        assert_eq!(sensor["@parent"], "device/main//");
        let probe = payload("twinlake/truck0002/te/device/sensor2-probe//");
        assert_eq!(probe["@parent"], "device/sensor2//");
        let service = payload("twinlake/truck0002/te/device/main/service/collectd");
        assert_eq!(service["@parent"], "device/main//");
    }

    #[test]
    fn gateway_trucks_move_between_depots_and_read_as_site_trucks() {
        let options = ["--depot-moves", "0.05", "--devices-per-depot", "2"];
        let site = run(&[&["--devices", "4"], &options[..]].concat(), 100);
        let gateways = run(&[&["--gateways", "4"], &options[..]].concat(), 100);
        // The readings are the same fleet's: moves draw from random numbers of their own.
        assert_eq!(telemetry(&site), telemetry(&gateways));
        let moves: Vec<&Outgoing> = gateways
            .iter()
            .filter(|m| m.topic.ends_with("/twin/depot"))
            .collect();
        assert!(moves.len() > 5, "{} moves", moves.len());
        assert!(
            moves
                .iter()
                .all(|m| m.retain && m.payload.starts_with("\"depot0"))
        );
    }

    #[test]
    fn silent_trucks_stop_for_the_last_tenth_and_the_rest_is_unchanged() {
        let all = run(&["--gateways", "4", "--rounds", "100"], 100);
        let silent = run(
            &[
                "--gateways",
                "4",
                "--rounds",
                "100",
                "--silent",
                "truck0004",
            ],
            100,
        );
        let from = |truck: &str, messages: &[Outgoing]| -> Vec<String> {
            messages
                .iter()
                .filter(|m| m.topic.starts_with(&format!("twinlake/{truck}/")))
                .map(|m| m.payload.clone())
                .collect()
        };
        // truck0004 says what it said before, up to round 90 of 100, and nothing after.
        let (quiet, loud) = (from("truck0004", &silent), from("truck0004", &all));
        assert!(quiet.len() < loud.len());
        assert_eq!(quiet[..], loud[..quiet.len()]);
        let last = telemetry(&silent)
            .into_iter()
            .filter_map(|r| r["time"].as_str().map(str::to_owned))
            .max();
        assert_eq!(last.as_deref(), Some("2026-11-01T01:39:00Z"));
        let quiet_times = quiet
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter_map(|r| r["time"].as_str().map(str::to_owned))
            .max();
        assert_eq!(quiet_times.as_deref(), Some("2026-11-01T01:29:00Z"));
        let others = |messages: &[Outgoing]| {
            let kept: Vec<&Outgoing> = messages
                .iter()
                .filter(|m| !m.topic.starts_with("twinlake/truck0004/"))
                .collect();
            kept.iter().map(|m| m.payload.clone()).collect::<Vec<_>>()
        };
        assert_eq!(others(&silent), others(&all));
    }

    #[test]
    fn late_trucks_send_every_reading_out_of_order() {
        let on_time = telemetry(&run(&["--devices", "5"], 300));
        let late = telemetry(&run(&["--devices", "5", "--late", "0.01"], 300));
        assert_eq!(on_time.len(), 5 * 300);
        assert_eq!(late.len(), 5 * 300, "no reading is lost while offline");
        let times: Vec<&str> = late.iter().filter_map(|r| r["time"].as_str()).collect();
        let backwards = times.windows(2).filter(|pair| pair[1] < pair[0]).count();
        assert!(backwards > 0, "some readings arrive after later ones");
        let in_order = on_time.iter().filter_map(|r| r["time"].as_str());
        assert!(in_order.clone().zip(in_order.skip(1)).all(|(a, b)| a <= b));
    }

    #[test]
    fn missing_values_leave_the_time_and_the_rest() {
        let full = telemetry(&run(&["--devices", "5"], 100));
        let gaps = telemetry(&run(&["--devices", "5", "--missing", "0.05"], 100));
        let values = |readings: &[serde_json::Value]| readings.iter().map(leaves).sum::<usize>();
        assert_eq!(values(&full), 5 * 100 * 11, "10 values and the time");
        let share = 1.0 - (values(&gaps) - gaps.len()) as f64 / (5.0 * 100.0 * 10.0);
        assert!((0.03..0.07).contains(&share), "missing share {share}");
        assert!(gaps.iter().all(|r| r["time"].is_string()));
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert!(SimulateArgs::parse_options(&["--late", "1.5"]).is_err());
        assert!(SimulateArgs::parse_options(&["--missing", "-0.1"]).is_err());
    }
}
