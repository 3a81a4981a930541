//! The simulated etcd of one cluster, shared by its control-plane nodes: Bootstrap creates it
//! on one node, other control planes join as learners and are promoted, members are removed or
//! leave, leadership moves, and quorum is tracked.

use std::collections::BTreeSet;

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// etcd member id (shown by talosctl as %016x).
    pub id: u64,
    /// The node address the member runs on.
    pub node: String,
    pub hostname: String,
    pub learner: bool,
}

/// What happened to a cluster's membership, in order: the simulator's own record, for tests
/// to check invariants against (never what a controller reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub id: u64,
    /// The node the member runs on.
    pub node: String,
    /// Right after a removal: whether the remaining voting members on healthy nodes still had
    /// quorum (`None` for other changes).
    pub quorum_after: Option<bool>,
    /// When it happened.
    pub at: std::time::SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Bootstrap,
    Join,
    Promote,
    Remove,
}

/// The etcd of one cluster.
#[derive(Debug, Default)]
pub struct Etcd {
    pub bootstrapped: bool,
    pub members: Vec<Member>,
    pub leader: Option<u64>,
    /// Every membership change.
    pub history: Vec<Change>,
    next_id: u64,
}

/// Why an etcd operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd data directory is not empty")]
    AlreadyBootstrapped,
    #[error("member {0:016x} not found")]
    NoSuchMember(u64),
    #[error("this node is not an etcd member")]
    NotMember,
}

impl Etcd {
    fn new_id(&mut self, seed: &str) -> u64 {
        // Deterministic per cluster, never zero, never repeated: a mix of the node and a counter.
        self.next_id += 1;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes().chain(self.next_id.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h.max(1)
    }

    /// Bootstrap etcd on `node`: the first member, and leader.
    pub fn bootstrap(&mut self, node: &str, hostname: &str) -> Result<u64, EtcdError> {
        if self.bootstrapped {
            return Err(EtcdError::AlreadyBootstrapped);
        }
        let id = self.new_id(node);
        self.bootstrapped = true;
        self.members.push(Member {
            id,
            node: node.to_owned(),
            hostname: hostname.to_owned(),
            learner: false,
        });
        self.leader = Some(id);
        self.record(Op::Bootstrap, id, node);
        Ok(id)
    }

    fn record(&mut self, op: Op, id: u64, node: &str) {
        self.history.push(Change {
            op,
            id,
            node: node.to_owned(),
            quorum_after: None,
            at: std::time::SystemTime::now(),
        });
    }

    /// `node` joins as a learner (no-op if it is a member already).
    pub fn join(&mut self, node: &str, hostname: &str) -> Option<u64> {
        if !self.bootstrapped {
            return None;
        }
        if let Some(m) = self.member_of(node) {
            return Some(m.id);
        }
        let id = self.new_id(node);
        self.members.push(Member {
            id,
            node: node.to_owned(),
            hostname: hostname.to_owned(),
            learner: true,
        });
        self.record(Op::Join, id, node);
        Some(id)
    }

    /// A learner becomes a voter; a voter (a node rebooted with its member) stays as it is.
    pub fn promote(&mut self, id: u64) {
        let Some(m) = self.members.iter_mut().find(|m| m.id == id && m.learner) else {
            return;
        };
        m.learner = false;
        let node = m.node.clone();
        self.record(Op::Promote, id, &node);
    }

    pub fn member_of(&self, node: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    pub fn remove(&mut self, id: u64) -> Result<Member, EtcdError> {
        let i = self
            .members
            .iter()
            .position(|m| m.id == id)
            .ok_or(EtcdError::NoSuchMember(id))?;
        let removed = self.members.remove(i);
        if self.leader == Some(id) {
            self.leader = self.members.iter().find(|m| !m.learner).map(|m| m.id);
        }
        self.record(Op::Remove, id, &removed.node);
        Ok(removed)
    }

    pub fn leave(&mut self, node: &str) -> Result<Member, EtcdError> {
        let id = self.member_of(node).ok_or(EtcdError::NotMember)?.id;
        self.remove(id)
    }

    /// Move leadership away from `node` if it leads; returns the leader afterwards.
    pub fn forfeit(
        &mut self,
        node: &str,
        healthy: &BTreeSet<String>,
    ) -> Result<Option<u64>, EtcdError> {
        let me = self.member_of(node).ok_or(EtcdError::NotMember)?.id;
        if self.leader == Some(me) {
            self.leader = self
                .members
                .iter()
                .find(|m| !m.learner && m.id != me && healthy.contains(&m.node))
                .map(|m| m.id)
                .or(Some(me));
        }
        Ok(self.leader)
    }

    /// Quorum: more than half of the voting members are on healthy nodes.
    pub fn has_quorum(&self, healthy: &BTreeSet<String>) -> bool {
        let voters: Vec<&Member> = self.members.iter().filter(|m| !m.learner).collect();
        let up = voters.iter().filter(|m| healthy.contains(&m.node)).count();
        !voters.is_empty() && up * 2 > voters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bootstrap_once_join_promote_remove() {
        let mut e = Etcd::default();
        assert!(
            e.join("a", "a").is_none(),
            "nothing to join before bootstrap"
        );
        let a = e.bootstrap("a", "a").unwrap();
        assert_eq!(e.bootstrap("b", "b"), Err(EtcdError::AlreadyBootstrapped));
        let b = e.join("b", "b").unwrap();
        let c = e.join("c", "c").unwrap();
        assert!(e.members.iter().filter(|m| m.learner).count() == 2);
        e.promote(b);
        e.promote(c);
        let recorded = e.history.len();
        e.promote(b);
        assert_eq!(
            e.join("b", "b"),
            Some(b),
            "a rebooted member rejoins as itself"
        );
        assert_eq!(e.history.len(), recorded, "a voter is not promoted again");
        assert_ne!(a, b);
        assert!(e.has_quorum(&healthy(&["a", "b"])));
        assert!(!e.has_quorum(&healthy(&["a"])), "1 of 3 is no quorum");
        assert_eq!(e.forfeit("a", &healthy(&["a", "b", "c"])).unwrap(), Some(b));
        e.remove(c).unwrap();
        assert_eq!(e.remove(c), Err(EtcdError::NoSuchMember(c)));
        e.leave("b").unwrap();
        assert_eq!(e.leader, Some(a), "leadership moves to a remaining voter");
    }
}
