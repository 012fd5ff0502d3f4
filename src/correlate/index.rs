//! Connections that an access line may still refer to, keyed by tlsplice's
//! local address, with eviction by end time.

use super::connection_log::Connection;
use super::time::Micros;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// The connection chosen for an access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub client: IpAddr,
    /// Whether another candidate with a different client was just as near, so
    /// the choice between them was made by the nearest midpoint.
    pub ambiguous: bool,
}

#[derive(Default)]
pub struct Index {
    by_local: HashMap<SocketAddr, Vec<Connection>>,
    /// End time and key of every stored connection, smallest end first.
    by_end: BinaryHeap<Reverse<(Micros, SocketAddr)>>,
    len: usize,
    peak_len: usize,
}

impl Index {
    pub fn insert(&mut self, connection: Connection) {
        self.by_end
            .push(Reverse((connection.end, connection.local)));
        self.by_local
            .entry(connection.local)
            .or_default()
            .push(connection);
        self.len += 1;
        self.peak_len = self.peak_len.max(self.len);
    }

    /// Removes every connection that ended before `cutoff`.
    pub fn evict_ended_before(&mut self, cutoff: Micros) {
        while let Some(Reverse((end, local))) = self.by_end.peek().copied() {
            if end >= cutoff {
                break;
            }
            self.by_end.pop();
            let connections = self
                .by_local
                .get_mut(&local)
                .expect("every heap entry has its connection in the map");
            let position = connections
                .iter()
                .position(|c| c.end == end)
                .expect("every heap entry has its connection in the map");
            connections.swap_remove(position);
            if connections.is_empty() {
                self.by_local.remove(&local);
            }
            self.len -= 1;
        }
    }

    /// Finds the connection from `local` whose lifetime, widened by `skew` on
    /// both sides, overlaps the access time interval `[time, time + resolution)`.
    /// When several do, the one nearest to the interval wins: first by the gap
    /// between the unwidened lifetime and the interval, then by the distance
    /// between their midpoints.
    pub fn find(
        &self,
        local: SocketAddr,
        time: Micros,
        resolution: Micros,
        skew: Micros,
    ) -> Option<Match> {
        let candidates = self.by_local.get(&local)?;
        let interval_end = time + resolution;
        let distance = |c: &Connection| {
            let gap = (c.start - interval_end).max(time - c.end).max(0);
            let midpoint_distance = ((c.start + c.end) - (time + interval_end)).abs();
            (gap, midpoint_distance)
        };

        let overlapping = candidates
            .iter()
            .filter(|c| c.start - skew < interval_end && time <= c.end + skew);
        let best = overlapping.clone().min_by_key(|c| distance(c))?;
        let best_gap = distance(best).0;
        let ambiguous = overlapping
            .filter(|c| c.client != best.client)
            .any(|c| distance(c).0 == best_gap);

        Some(Match {
            client: best.client,
            ambiguous,
        })
    }

    /// Largest number of connections stored at once so far.
    pub fn peak_len(&self) -> usize {
        self.peak_len
    }
}
