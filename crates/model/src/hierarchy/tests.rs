//! The fold, on the change sequences thin-edge produces.

use super::*;

const MAIN: &str = "device/main//";

fn facts(kind: EntityKind, parent: Option<&str>, name: &str) -> EntityFacts {
    EntityFacts {
        gateway: "main".to_owned(),
        topic_id: String::new(),
        kind,
        parent: parent.map(str::to_owned),
        external_id: None,
        name: Some(name.to_owned()),
        entity_type: None,
        attributes: None,
    }
}

fn child(parent: &str, name: &str) -> EntityFacts {
    facts(EntityKind::ChildDevice, Some(parent), name)
}

fn registered(time: i64, entity: &str, facts: EntityFacts) -> EntityChangeRow {
    EntityChangeRow {
        time,
        entity: entity.to_owned(),
        change: ChangeKind::Registered,
        facts: Some(facts),
    }
}

fn deregistered(time: i64, entity: &str) -> EntityChangeRow {
    EntityChangeRow {
        time,
        entity: entity.to_owned(),
        change: ChangeKind::Deregistered,
        facts: None,
    }
}

/// The main device, as ingest registers it from its gateway's first message.
fn main_registered() -> EntityChangeRow {
    EntityChangeRow {
        time: 0,
        entity: MAIN.to_owned(),
        change: ChangeKind::AutoRegistered,
        facts: Some(facts(EntityKind::Device, None, "main")),
    }
}

/// The history of a gateway whose main device is registered, then `changes`.
fn fold(changes: impl IntoIterator<Item = EntityChangeRow>) -> EntityHistory {
    EntityHistory::from_changes(std::iter::once(main_registered()).chain(changes))
}

fn current(history: &EntityHistory) -> Vec<(String, Option<String>)> {
    let mut rows: Vec<_> = history
        .current()
        .map(|v| (v.entity.clone(), v.facts.parent.clone()))
        .collect();
    rows.sort();
    rows
}

fn ancestors_at(history: &EntityHistory, entity: &str, time: i64) -> Vec<(String, u32)> {
    let mut rows: Vec<_> = history
        .ancestry()
        .into_iter()
        .filter(|a| a.descendant == entity && a.covers(time))
        .map(|a| (a.ancestor, a.depth))
        .collect();
    rows.sort_by_key(|(_, depth)| *depth);
    rows
}

#[test]
fn the_main_device_is_a_root_from_its_registration() {
    assert_eq!(current(&EntityHistory::new()), Vec::new());
    let history = fold([]);
    assert_eq!(current(&history), vec![(MAIN.to_owned(), None)]);
    assert_eq!(history.versions()[0].valid_from, 0);
    assert_eq!(history.path(MAIN).as_deref(), Some("main"));
}

#[test]
fn a_move_closes_one_version_and_opens_another() {
    let history = fold([
        registered(10, "device/line1//", child(MAIN, "line1")),
        registered(11, "device/line2//", child(MAIN, "line2")),
        registered(12, "device/robot//", child("device/line1//", "robot")),
        registered(50, "device/robot//", child("device/line2//", "robot")),
    ]);
    let robot: Vec<_> = history
        .versions()
        .iter()
        .filter(|v| v.entity == "device/robot//")
        .collect();
    assert_eq!(robot.len(), 2);
    // The first version reaches back to the beginning, the move starts when it was received.
    assert_eq!((robot[0].valid_from, robot[0].valid_to), (0, Some(50)));
    assert_eq!((robot[1].valid_from, robot[1].valid_to), (50, None));
    assert_eq!(robot[1].registered_at, Some(12));
    assert_eq!(robot[1].updated_at, Some(50));
    assert_eq!(
        ancestors_at(&history, "device/robot//", 49),
        vec![("device/line1//".to_owned(), 1), (MAIN.to_owned(), 2)]
    );
    assert_eq!(
        ancestors_at(&history, "device/robot//", 50),
        vec![("device/line2//".to_owned(), 1), (MAIN.to_owned(), 2)]
    );
    assert_eq!(
        history.path("device/robot//").as_deref(),
        Some("main/line2/robot")
    );
}

#[test]
fn an_identical_registration_is_not_a_new_version() {
    let history = fold([
        registered(10, "device/a//", child(MAIN, "a")),
        registered(20, "device/a//", child(MAIN, "a")),
    ]);
    assert_eq!(history.versions().len(), 2);
    assert_eq!(history.versions()[1].updated_at, Some(10));
}

#[test]
fn deregistration_removes_the_subtree_and_a_later_registration_starts_fresh() {
    let history = fold([
        registered(10, "device/a//", child(MAIN, "a")),
        registered(11, "device/b//", child("device/a//", "b")),
        registered(
            12,
            "device/b/service/s",
            facts(EntityKind::Service, Some("device/b//"), "s"),
        ),
        registered(13, "device/other//", child(MAIN, "other")),
        deregistered(30, "device/a//"),
        registered(40, "device/a//", child(MAIN, "a")),
    ]);
    assert_eq!(
        current(&history),
        vec![
            ("device/a//".to_owned(), Some(MAIN.to_owned())),
            ("device/main//".to_owned(), None),
            ("device/other//".to_owned(), Some(MAIN.to_owned())),
        ]
    );
    let ended: Vec<_> = history
        .versions()
        .iter()
        .filter(|v| v.valid_to == Some(30))
        .map(|v| v.entity.as_str())
        .collect();
    assert_eq!(ended, ["device/a//", "device/b//", "device/b/service/s"]);
    let back = history
        .versions()
        .last()
        .map(|v| (v.valid_from, v.registered_at));
    assert_eq!(back, Some((40, Some(40))));
    assert!(ancestors_at(&history, "device/b/service/s", 35).is_empty());
}

#[test]
fn a_child_waits_for_its_parent() {
    let history = fold([
        registered(10, "device/probe//", child("device/sensor//", "probe")),
        registered(11, "device/sensor//", child("device/truck//", "sensor")),
        registered(12, "device/truck//", child(MAIN, "truck")),
    ]);
    assert_eq!(
        ancestors_at(&history, "device/probe//", 12),
        vec![
            ("device/sensor//".to_owned(), 1),
            ("device/truck//".to_owned(), 2),
            (MAIN.to_owned(), 3)
        ]
    );
    let probe = history
        .versions()
        .iter()
        .find(|v| v.entity == "device/probe//");
    assert_eq!(probe.map(|v| v.registered_at), Some(Some(12)));
}

#[test]
fn auto_registration_never_overrides_a_registration() {
    let auto = |time, entity: &str| EntityChangeRow {
        time,
        entity: entity.to_owned(),
        change: ChangeKind::AutoRegistered,
        facts: Some(child(MAIN, "x")),
    };
    let history = fold([
        registered(10, "device/x//", child("device/p//", "x")),
        auto(11, "device/x//"),
        registered(12, "device/p//", child(MAIN, "p")),
    ]);
    assert_eq!(
        ancestors_at(&history, "device/x//", 12),
        vec![("device/p//".to_owned(), 1), (MAIN.to_owned(), 2)]
    );
}

#[test]
fn a_registration_under_its_own_descendant_waits() {
    let history = fold([
        registered(10, "device/a//", child(MAIN, "a")),
        registered(11, "device/b//", child("device/a//", "b")),
        registered(12, "device/a//", child("device/b//", "a")),
    ]);
    assert_eq!(
        ancestors_at(&history, "device/b//", 20),
        vec![("device/a//".to_owned(), 1), (MAIN.to_owned(), 2)]
    );
}

#[test]
fn a_rename_keeps_the_ancestry_in_one_stretch() {
    let history = fold([
        registered(10, "device/a//", child(MAIN, "a")),
        registered(11, "device/b//", child("device/a//", "b")),
        registered(20, "device/a//", child(MAIN, "renamed")),
    ]);
    let b_under_a: Vec<_> = history
        .ancestry()
        .into_iter()
        .filter(|a| a.descendant == "device/b//" && a.ancestor == "device/a//")
        .map(|a| (a.valid_from, a.valid_to))
        .collect();
    assert_eq!(b_under_a, vec![(0, None)]);
}

/// A chain of 20,000 children registered leaf first: each waits for its parent, and the root's
/// registration releases them all. Looking through every waiting registration for each one
/// released took quadratic time (4×10⁸ comparisons); the index by parent takes one step each.
#[test]
fn a_long_chain_of_waiting_registrations_is_released_in_linear_time() {
    let chain = 20_000;
    let entity = |n: usize| format!("device/c{n}//");
    let mut history = fold([]);
    for n in (1..chain).rev() {
        history.apply(registered(1, &entity(n), child(&entity(n - 1), "c")));
    }
    assert_eq!(history.known(), 1 + chain - 1);
    assert_eq!(history.depth_under(Some(&entity(chain - 1))), Some(chain));
    let began = std::time::Instant::now();
    history.apply(registered(2, &entity(0), child(MAIN, "c")));
    eprintln!(
        "released {chain} waiting registrations in {:?}",
        began.elapsed()
    );
    assert_eq!(history.current().count(), 1 + chain);
    assert_eq!(
        history.depth_under(Some(&entity(chain - 1))),
        Some(chain + 1)
    );
    assert_eq!(history.depth_under(Some(MAIN)), Some(1));
    assert_eq!(history.depth_under(None), Some(0));
}

#[test]
fn depth_of_a_waiting_cycle_is_none() {
    let mut history = fold([]);
    history.apply(registered(1, "device/a//", child("device/b//", "a")));
    history.apply(registered(1, "device/b//", child("device/a//", "b")));
    assert_eq!(history.depth_under(Some("device/a//")), None);
}
