//! The twin hierarchy through time, folded from `entity_changes` rows by thin-edge's rules.
//!
//! Registrations carry no time of their own: Twinlake stamps them on receipt. An entity's
//! *first* version is therefore valid from the beginning of time (`valid_from` = 0, the Unix
//! epoch), so that telemetry which reached Twinlake before or with its registration (retained
//! replay, buffered uploads) still joins to it. Every later version (an update, a move, a
//! registration after a deregistration) starts when it was received.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::payload::entity::{ChangeKind, EntityChange, EntityKind};
use crate::topic::{DefaultScheme, EntityTopicId, Gateway};

/// One row of `entity_changes`, as the fold reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityChangeRow {
    /// ns since the Unix epoch.
    pub time: i64,
    pub entity: String,
    pub change: ChangeKind,
    /// `None` for a deregistration.
    pub facts: Option<EntityFacts>,
}

impl EntityChangeRow {
    /// The row a parsed registration, deregistration or auto-registration of one of
    /// `gateway`'s entities becomes: every topic id named within the gateway.
    pub fn new(gateway: &Gateway, topic_id: &EntityTopicId, change: &EntityChange) -> Self {
        Self {
            time: change.time.unix_nanos(),
            entity: gateway.entity_name(topic_id),
            change: change.change,
            facts: change.registration.as_ref().map(|r| EntityFacts {
                gateway: gateway.as_str().to_owned(),
                topic_id: topic_id.as_str().to_owned(),
                kind: r.kind,
                parent: r.parent.as_ref().map(|p| gateway.entity_name(p)),
                external_id: r.external_id.clone(),
                name: r.name.clone(),
                entity_type: r.entity_type.clone(),
                attributes: r.attributes.clone(),
            }),
        }
    }
}

/// What one version of an entity says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityFacts {
    pub gateway: String,
    /// The topic id as the gateway knows it (`device/sensor01//`).
    pub topic_id: String,
    pub kind: EntityKind,
    pub parent: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub entity_type: Option<String>,
    pub attributes: Option<String>,
}

/// One version of one entity: what it was from `valid_from` until `valid_to` (exclusive;
/// `None` while it is current).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityVersion {
    pub entity: String,
    pub facts: EntityFacts,
    /// When the registration that created the entity was received.
    pub registered_at: Option<i64>,
    /// When this version's registration was received.
    pub updated_at: Option<i64>,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
}

impl EntityVersion {
    /// The entity's label in a path: its `name`, else the distinctive part of its topic id.
    pub fn label(&self) -> String {
        if let Some(name) = &self.facts.name {
            return name.clone();
        }
        let Ok(id) = EntityTopicId::parse(&self.facts.topic_id) else {
            return self.entity.clone();
        };
        match id.default_scheme() {
            Some(DefaultScheme::MainDevice) => self.facts.gateway.clone(),
            Some(DefaultScheme::ChildDevice { device }) => device.to_owned(),
            Some(DefaultScheme::Service { service, .. }) => service.to_owned(),
            None => self.facts.topic_id.trim_end_matches('/').to_owned(),
        }
    }
}

/// Whether the stretch `[valid_from, valid_to)` holds at `at`, or now when `at` is `None`
/// (it has not ended). The one validity test of versions, ancestry rows and subtree spans.
pub fn valid_at(valid_from: i64, valid_to: Option<i64>, at: Option<i64>) -> bool {
    match at {
        None => valid_to.is_none(),
        Some(t) => valid_from <= t && valid_to.is_none_or(|to| t < to),
    }
}

/// `ancestor` is `depth` levels above `descendant` from `valid_from` until `valid_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ancestry {
    /// The gateway of both: a hierarchy never crosses gateways.
    pub gateway: String,
    pub ancestor: String,
    pub descendant: String,
    pub depth: u32,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
}

impl Ancestry {
    pub fn covers(&self, time: i64) -> bool {
        valid_at(self.valid_from, self.valid_to, Some(time))
    }
}

/// A registration held because its parent is not registered yet (thin-edge's pending store).
#[derive(Debug, Clone)]
struct Pending {
    change: ChangeKind,
    facts: EntityFacts,
}

/// Every version of every entity, built by applying `entity_changes` in time order.
#[derive(Debug, Clone)]
pub struct EntityHistory {
    versions: Vec<EntityVersion>,
    /// Registered entity → index of its current version.
    current: HashMap<String, usize>,
    /// Registered parent → its registered children.
    children: HashMap<String, BTreeSet<String>>,
    /// Entity → the registration waiting for its parent.
    pending: HashMap<String, Pending>,
    /// Parent → the entities whose registration waits for it, so that a registration looks
    /// only at its own waiting children, not at every pending one.
    pending_children: HashMap<String, BTreeSet<String>>,
    /// Entities that have had a version (their next one starts when it is received).
    seen: HashSet<String>,
}

impl Default for EntityHistory {
    fn default() -> Self {
        Self::new()
    }
}

/// The path of an entity from its chain of versions, its own first and its root last: the
/// labels from the root down, joined by `/`.
pub fn path_of(chain: &[&EntityVersion]) -> String {
    let labels: Vec<String> = chain.iter().rev().map(|version| version.label()).collect();
    labels.join("/")
}

impl EntityHistory {
    /// The hierarchy before any change: empty. Each gateway's main device, which thin-edge
    /// never registers, is auto-registered by ingest from the gateway's first message.
    pub fn new() -> Self {
        Self {
            versions: Vec::new(),
            current: HashMap::new(),
            children: HashMap::new(),
            pending: HashMap::new(),
            pending_children: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Folds `changes`, which must come in time order.
    pub fn from_changes(changes: impl IntoIterator<Item = EntityChangeRow>) -> Self {
        let mut history = Self::new();
        for change in changes {
            history.apply(change);
        }
        history
    }

    /// Whether `entity` is registered now, or its registration waits for its parent.
    pub fn is_known(&self, entity: &str) -> bool {
        self.current.contains_key(entity) || self.pending.contains_key(entity)
    }

    /// How many entities are registered now or wait for their parent.
    pub fn known(&self) -> usize {
        self.current.len() + self.pending.len()
    }

    /// How far below a root an entity whose parent is `parent` would be (1 for a child of the
    /// main device), following registered and waiting registrations alike; None for a chain
    /// that never ends in a root (a cycle).
    pub fn depth_under(&self, parent: Option<&str>) -> Option<usize> {
        let mut depth = 1;
        let mut next = parent;
        while let Some(id) = next {
            if depth > self.known() + 1 {
                return None;
            }
            let facts = match self.current.get(id) {
                Some(&index) => &self.versions[index].facts,
                None => match self.pending.get(id) {
                    Some(pending) => &pending.facts,
                    None => return Some(depth),
                },
            };
            depth += 1;
            next = facts.parent.as_deref();
        }
        Some(depth - 1)
    }

    fn add_pending(&mut self, entity: String, pending: Pending) {
        self.remove_pending(&entity);
        if let Some(parent) = &pending.facts.parent {
            self.pending_children
                .entry(parent.clone())
                .or_default()
                .insert(entity.clone());
        }
        self.pending.insert(entity, pending);
    }

    fn remove_pending(&mut self, entity: &str) -> Option<Pending> {
        let pending = self.pending.remove(entity)?;
        if let Some(parent) = &pending.facts.parent
            && let Some(waiting) = self.pending_children.get_mut(parent)
        {
            waiting.remove(entity);
            if waiting.is_empty() {
                self.pending_children.remove(parent);
            }
        }
        Some(pending)
    }

    /// Applies one change; changes must come in time order.
    pub fn apply(&mut self, row: EntityChangeRow) {
        let Some(facts) = row.facts else {
            self.deregister(&row.entity, row.time);
            return;
        };
        if row.change == ChangeKind::AutoRegistered && self.is_known(&row.entity) {
            return;
        }
        let parent_missing = facts
            .parent
            .as_deref()
            .is_some_and(|parent| !self.current.contains_key(parent));
        if parent_missing || self.would_cycle(&row.entity, facts.parent.as_deref()) {
            self.add_pending(
                row.entity,
                Pending {
                    change: row.change,
                    facts,
                },
            );
            return;
        }
        self.remove_pending(&row.entity);
        self.register(row.entity.clone(), facts, row.time);
        self.release_pending_children(row.entity, row.time);
    }

    /// Every version, in the order they were created.
    pub fn versions(&self) -> &[EntityVersion] {
        &self.versions
    }

    /// The current version of every registered entity.
    pub fn current(&self) -> impl Iterator<Item = &EntityVersion> {
        self.versions.iter().filter(|v| v.valid_to.is_none())
    }

    /// The transitive closure of the parent relation through time: one row per ancestor,
    /// descendant and depth, for each stretch of time it held.
    pub fn ancestry(&self) -> Vec<Ancestry> {
        let by_entity = self.version_indexes();
        let mut rows = Vec::new();
        for version in &self.versions {
            let span = (version.valid_from, version.valid_to);
            self.collect_ancestors(&by_entity, &version.entity, version, span, 1, &mut rows);
        }
        merge_adjacent(rows)
    }

    /// The parent of the registered `entity` now (None for a root or an unknown entity).
    pub fn current_parent(&self, entity: &str) -> Option<String> {
        let version = &self.versions[*self.current.get(entity)?];
        version.facts.parent.clone()
    }

    /// A label for `entity`: the names from the root down to it (`main/depot01/truck0001`),
    /// each the entity's `name`, else the distinctive part of its topic id.
    pub fn path(&self, entity: &str) -> Option<String> {
        let mut chain = Vec::new();
        let mut next = Some(entity);
        while let Some(id) = next {
            let version = &self.versions[*self.current.get(id)?];
            chain.push(version);
            if chain.len() > self.current.len() {
                return None;
            }
            next = version.facts.parent.as_deref();
        }
        Some(path_of(&chain))
    }

    /// Each entity's versions as indexes into [`Self::versions`], oldest first; owned, so
    /// that it can be kept beside the history.
    pub fn version_indexes(&self) -> HashMap<String, Vec<usize>> {
        let mut by_entity: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, version) in self.versions.iter().enumerate() {
            by_entity
                .entry(version.entity.clone())
                .or_default()
                .push(index);
        }
        by_entity
    }

    /// Walks up from `version` (of `descendant`, `depth - 1` levels below it) over `span`,
    /// emitting one row per parent version that overlaps the span.
    fn collect_ancestors(
        &self,
        by_entity: &HashMap<String, Vec<usize>>,
        descendant: &str,
        version: &EntityVersion,
        span: (i64, Option<i64>),
        depth: u32,
        rows: &mut Vec<Ancestry>,
    ) {
        // A stack of its own, not recursion: a chain as deep as a table holds must not
        // overflow the thread's stack.
        let mut stack = vec![(version, span, depth)];
        while let Some((version, span, depth)) = stack.pop() {
            let Some(parent) = version.facts.parent.as_deref() else {
                continue;
            };
            // A cycle cannot be registered, but a bound keeps a corrupt table from looping.
            if depth as usize > by_entity.len() {
                continue;
            }
            let parent_versions = by_entity.get(parent).into_iter().flatten();
            for parent_version in parent_versions.map(|&index| &self.versions[index]) {
                let Some(overlap) =
                    intersect(span, (parent_version.valid_from, parent_version.valid_to))
                else {
                    continue;
                };
                rows.push(Ancestry {
                    gateway: version.facts.gateway.clone(),
                    ancestor: parent.to_owned(),
                    descendant: descendant.to_owned(),
                    depth,
                    valid_from: overlap.0,
                    valid_to: overlap.1,
                });
                stack.push((parent_version, overlap, depth + 1));
            }
        }
    }

    fn register(&mut self, entity: String, facts: EntityFacts, time: i64) {
        let Some(&index) = self.current.get(&entity) else {
            let valid_from = if self.seen.contains(&entity) { time } else { 0 };
            self.open_version(entity, facts, Some(time), valid_from);
            return;
        };
        let previous = &mut self.versions[index];
        if previous.facts == facts {
            return;
        }
        previous.valid_to = Some(time);
        let registered_at = previous.registered_at;
        let old_parent = previous.facts.parent.clone();
        if let Some(parent) = old_parent
            && let Some(siblings) = self.children.get_mut(&parent)
        {
            siblings.remove(&entity);
        }
        self.current.remove(&entity);
        self.open_version(entity, facts, registered_at, time);
        if let Some(version) = self.versions.last_mut() {
            version.updated_at = Some(time);
        }
    }

    fn open_version(
        &mut self,
        entity: String,
        facts: EntityFacts,
        registered_at: Option<i64>,
        valid_from: i64,
    ) {
        if let Some(parent) = &facts.parent {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(entity.clone());
        }
        self.seen.insert(entity.clone());
        self.current.insert(entity.clone(), self.versions.len());
        self.versions.push(EntityVersion {
            entity,
            facts,
            registered_at,
            updated_at: registered_at,
            valid_from,
            valid_to: None,
        });
    }

    /// Registrations that waited for `parent` take effect now, and so on down.
    fn release_pending_children(&mut self, parent: String, time: i64) {
        let mut arrived = vec![parent];
        while let Some(parent) = arrived.pop() {
            let waiting = self.pending_children.remove(&parent).unwrap_or_default();
            for entity in waiting {
                let Some(pending) = self.remove_pending(&entity) else {
                    continue;
                };
                if pending.change == ChangeKind::AutoRegistered
                    && self.current.contains_key(&entity)
                {
                    continue;
                }
                self.register(entity.clone(), pending.facts, time);
                arrived.push(entity);
            }
        }
    }

    /// The entity and all its descendants end at `time`.
    fn deregister(&mut self, entity: &str, time: i64) {
        self.remove_pending(entity);
        if !self.current.contains_key(entity) {
            return;
        }
        let mut doomed = vec![entity.to_owned()];
        let mut next = 0;
        while next < doomed.len() {
            if let Some(children) = self.children.remove(&doomed[next]) {
                doomed.extend(children);
            }
            next += 1;
        }
        for gone in &doomed {
            if let Some(index) = self.current.remove(gone) {
                self.versions[index].valid_to = Some(time);
            }
        }
        for siblings in self.children.values_mut() {
            siblings.remove(entity);
        }
    }

    /// Whether making `parent` the parent of `entity` would put `entity` above itself.
    fn would_cycle(&self, entity: &str, parent: Option<&str>) -> bool {
        let mut next = parent;
        let mut steps = 0;
        while let Some(id) = next {
            if id == entity || steps > self.current.len() {
                return true;
            }
            steps += 1;
            next = self
                .current
                .get(id)
                .and_then(|&index| self.versions[index].facts.parent.as_deref());
        }
        false
    }
}

/// The overlap of two stretches `[from, to)`, if they overlap.
pub fn intersect(a: (i64, Option<i64>), b: (i64, Option<i64>)) -> Option<(i64, Option<i64>)> {
    let from = a.0.max(b.0);
    let to = match (a.1, b.1) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    };
    to.is_none_or(|to| from < to).then_some((from, to))
}

/// Joins stretches of the same (ancestor, descendant, depth) that meet, as when a version
/// changed only a name: the ancestry did not change there.
fn merge_adjacent(mut rows: Vec<Ancestry>) -> Vec<Ancestry> {
    rows.sort_by(|a, b| {
        (&a.descendant, &a.ancestor, a.depth, a.valid_from).cmp(&(
            &b.descendant,
            &b.ancestor,
            b.depth,
            b.valid_from,
        ))
    });
    let mut merged: Vec<Ancestry> = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(last) = merged.last_mut()
            && last.ancestor == row.ancestor
            && last.descendant == row.descendant
            && last.depth == row.depth
            && last.valid_to == Some(row.valid_from)
        {
            last.valid_to = row.valid_to;
            continue;
        }
        merged.push(row);
    }
    merged
}

#[cfg(test)]
mod tests;
