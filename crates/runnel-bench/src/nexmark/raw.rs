//! The raw baselines: q1 and q5 as plain Rust loops over the same recorded events — decode
//! the JSON, convert or count in hash maps, close windows as the watermark passes them —
//! with none of the engine (no typed streams, no per-key rows, no outputs as JSON).

use std::collections::{BTreeMap, HashMap};

use runnel::core::RecordedEvent;

use super::generator::{Bid, OUT_OF_ORDERNESS_MS};
use super::queries::{EuroBid, EUROS_PER_DOLLAR, Q5_ADVANCE, Q5_WINDOW};

/// q1 by hand: the euro bids of a batch, counted and dropped (as the engine tier drops
/// its outputs).
#[derive(Default)]
pub struct RawQ1 {
    out: Vec<EuroBid>,
    pub results: u64,
}

impl RawQ1 {
    pub fn batch(&mut self, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for e in events {
            if e.stream.category() != "Bid" {
                continue;
            }
            let b: Bid = serde_json::from_slice(&e.data)?;
            self.out.push(EuroBid {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price as f64 * EUROS_PER_DOLLAR,
                date_time: b.date_time,
            });
        }
        self.results += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }
}

/// q5 by hand: per hopping window a map of bids per auction; when the watermark (newest
/// time less the disorder) passes a window's end, its auctions with the most bids.
#[derive(Default)]
pub struct RawQ5 {
    windows: BTreeMap<i64, HashMap<u64, u64>>,
    newest: Option<i64>,
    /// (window start, auction) pairs emitted: each window's winners.
    pub results: u64,
}

impl RawQ5 {
    fn watermark(&self) -> i64 {
        self.newest.map_or(i64::MIN, |t| t - OUT_OF_ORDERNESS_MS)
    }

    pub fn batch(&mut self, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let size = Q5_WINDOW.as_millis() as i64;
        let advance = Q5_ADVANCE.as_millis() as i64;
        for e in events {
            if e.stream.category() != "Bid" {
                continue;
            }
            let b: Bid = serde_json::from_slice(&e.data)?;
            let t = b.date_time;
            let wm = self.watermark();
            let mut start = t.div_euclid(advance) * advance;
            while start > t - size {
                // A window already closed takes nothing more (no bid is late here: the
                // disorder is within the watermark's allowance).
                if start + size > wm {
                    *self
                        .windows
                        .entry(start)
                        .or_default()
                        .entry(b.auction)
                        .or_default() += 1;
                }
                start -= advance;
            }
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
        self.close(self.watermark());
        Ok(())
    }

    /// Emits every window whose end is at or before `wm`.
    pub fn close(&mut self, wm: i64) {
        let size = Q5_WINDOW.as_millis() as i64;
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() + size > wm {
                break;
            }
            let counts = entry.remove();
            let max = counts.values().copied().max().unwrap_or(0);
            let hottest: Vec<u64> = counts
                .iter()
                .filter(|(_, c)| **c == max)
                .map(|(a, _)| *a)
                .collect();
            self.results += hottest.len() as u64;
        }
    }
}
