//! Joins: two keyed streams within a time bound, and a stream with a table as of each
//! record's time.
//!
//! Both follow one rule for lateness: a record is late when its time plus the grace is at
//! or before the watermark. A buffered record leaves when its bound plus the grace has
//! passed — exactly when no record still on time could pair with it — so a record without
//! a partner is emitted then and never turns out to have had one.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::engine::{Cx, Operator, ResultKind, Row, Value};
use super::ops::{row_mut, row_or, take};
use super::{JoinKind, Millis, StreamError};

/// Pairs records into a result; `None` emits nothing for that pair (or lone record).
pub(crate) type Combine<L, R, O> =
    Arc<dyn Fn(&str, Option<&L>, Option<&R>) -> Option<O> + Send + Sync>;

fn to_json<S: Serialize>(v: &S) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[derive(Clone, Serialize, Deserialize)]
struct Buf<V> {
    t: Millis,
    v: V,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    m: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "L: Serialize + DeserializeOwned, R: Serialize + DeserializeOwned")]
struct JoinRow<L, R> {
    l: Vec<Buf<L>>,
    r: Vec<Buf<R>>,
}

/// A windowed stream–stream join: `l` and `r` of one key pair when their times are at most
/// `within` apart.
pub(crate) struct WindowJoin<L, R, O> {
    pub within: Millis,
    pub grace: Millis,
    pub kind: JoinKind,
    pub combine: Combine<L, R, O>,
    pub _t: PhantomData<fn(L, R) -> O>,
}

impl<L, R, O> WindowJoin<L, R, O> {
    fn expires(&self, t: Millis) -> Millis {
        t.saturating_add(self.within).saturating_add(self.grace)
    }
}

impl<L, R, O> Operator for WindowJoin<L, R, O>
where
    L: Serialize + DeserializeOwned + Send + Sync + 'static,
    R: Serialize + DeserializeOwned + Send + Sync + 'static,
    O: Serialize + Send + 'static,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        side: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let late = time.saturating_add(self.grace) <= cx.wm;
        let r = row_or(row, || JoinRow::<L, R> {
            l: Vec::new(),
            r: Vec::new(),
        });
        if side == 0 {
            let v: L = take(value);
            if late {
                cx.late(key, time, to_json(&v));
            } else {
                let mut m = false;
                for b in r.r.iter_mut() {
                    if (b.t - time).abs() <= self.within {
                        if let Some(o) = (self.combine)(key, Some(&v), Some(&b.v)) {
                            cx.emit(key, None, time.max(b.t), ResultKind::Record, to_json(&o));
                        }
                        b.m = true;
                        m = true;
                    }
                }
                r.l.push(Buf { t: time, v, m });
            }
        } else {
            let v: R = take(value);
            if late {
                cx.late(key, time, to_json(&v));
            } else {
                let mut m = false;
                for b in r.l.iter_mut() {
                    if (b.t - time).abs() <= self.within {
                        if let Some(o) = (self.combine)(key, Some(&b.v), Some(&v)) {
                            cx.emit(key, None, time.max(b.t), ResultKind::Record, to_json(&o));
                        }
                        b.m = true;
                        m = true;
                    }
                }
                r.r.push(Buf { t: time, v, m });
            }
        }
        if r.l.is_empty() && r.r.is_empty() {
            *row = None;
        }
        Ok(())
    }

    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>) {
        let Some(r) = row_mut::<JoinRow<L, R>>(row) else {
            return;
        };
        let wm = cx.wm;
        let left_alone = matches!(self.kind, JoinKind::Left | JoinKind::Outer);
        let right_alone = matches!(self.kind, JoinKind::Outer);
        // Expired records in time order across both sides (left first on a tie).
        let mut gone: Vec<(Millis, u8, usize)> = Vec::new();
        for (i, b) in r.l.iter().enumerate() {
            if self.expires(b.t) <= wm {
                gone.push((b.t, 0, i));
            }
        }
        for (i, b) in r.r.iter().enumerate() {
            if self.expires(b.t) <= wm {
                gone.push((b.t, 1, i));
            }
        }
        gone.sort();
        for (t, side, i) in &gone {
            if *side == 0 && left_alone && !r.l[*i].m {
                if let Some(o) = (self.combine)(key, Some(&r.l[*i].v), None) {
                    cx.emit(key, None, *t, ResultKind::Record, to_json(&o));
                }
            }
            if *side == 1 && right_alone && !r.r[*i].m {
                if let Some(o) = (self.combine)(key, None, Some(&r.r[*i].v)) {
                    cx.emit(key, None, *t, ResultKind::Record, to_json(&o));
                }
            }
        }
        r.l.retain(|b| self.expires(b.t) > wm);
        r.r.retain(|b| self.expires(b.t) > wm);
        if r.l.is_empty() && r.r.is_empty() {
            *row = None;
        }
    }

    fn due(&self, row: &Row) -> Option<Millis> {
        let r = row
            .downcast_ref::<JoinRow<L, R>>()
            .expect("an operator's rows have the operator's row type");
        r.l.iter()
            .map(|b| b.t)
            .chain(r.r.iter().map(|b| b.t))
            .min()
            .map(|t| self.expires(t))
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        serde_json::to_vec(
            row.downcast_ref::<JoinRow<L, R>>()
                .expect("an operator's rows have the operator's row type"),
        )
        .expect("state serializes")
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        let r: JoinRow<L, R> =
            serde_json::from_slice(b).map_err(|e| StreamError::State(e.to_string()))?;
        Ok(Box::new(r))
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "L: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned")]
struct TableRow<L, V> {
    /// The table's versions of this key by time: every one newer than the watermark minus
    /// the grace, and the newest before it.
    versions: Vec<(Millis, V)>,
    /// Stream records waiting out the grace, by time (arrival order among equal times).
    pending: Vec<(Millis, L)>,
}

/// A stream–table join: each stream record meets the table's value of its key as of the
/// record's time, once the grace for late table updates has passed.
pub(crate) struct TableJoin<L, V, O> {
    pub grace: Millis,
    pub kind: JoinKind,
    pub combine: Combine<L, V, O>,
    pub _t: PhantomData<fn(L, V) -> O>,
}

impl<L, V, O> Operator for TableJoin<L, V, O>
where
    L: Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    O: Serialize + Send + 'static,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        side: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let late = time.saturating_add(self.grace) <= cx.wm;
        let r = row_or(row, || TableRow::<L, V> {
            versions: Vec::new(),
            pending: Vec::new(),
        });
        if side == 0 {
            let v: L = take(value);
            if late {
                cx.late(key, time, to_json(&v));
            } else {
                let i = r.pending.partition_point(|(t, _)| *t <= time);
                r.pending.insert(i, (time, v));
            }
        } else {
            let v: V = take(value);
            if late {
                cx.late(key, time, to_json(&v));
            } else {
                // A later update at the same time replaces the earlier one.
                match r.versions.binary_search_by(|(t, _)| t.cmp(&time)) {
                    Ok(i) => r.versions[i].1 = v,
                    Err(i) => r.versions.insert(i, (time, v)),
                }
            }
        }
        if r.pending.is_empty() && r.versions.is_empty() {
            *row = None;
        }
        Ok(())
    }

    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>) {
        let Some(r) = row_mut::<TableRow<L, V>>(row) else {
            return;
        };
        let horizon = cx.wm.saturating_sub(self.grace);
        let ready = r.pending.partition_point(|(t, _)| *t <= horizon);
        let released: Vec<(Millis, L)> = r.pending.drain(..ready).collect();
        for (t, l) in released {
            let i = r.versions.partition_point(|(vt, _)| *vt <= t);
            let found = i.checked_sub(1).map(|i| &r.versions[i].1);
            if found.is_none() && self.kind == JoinKind::Inner {
                continue;
            }
            if let Some(o) = (self.combine)(key, Some(&l), found) {
                cx.emit(key, None, t, ResultKind::Record, to_json(&o));
            }
        }
        // Versions no record still to come can see: all but the newest at or before the
        // horizon.
        let i = r.versions.partition_point(|(vt, _)| *vt <= horizon);
        if i > 1 {
            r.versions.drain(..i - 1);
        }
        if r.pending.is_empty() && r.versions.is_empty() {
            *row = None;
        }
    }

    fn due(&self, row: &Row) -> Option<Millis> {
        let r = row
            .downcast_ref::<TableRow<L, V>>()
            .expect("an operator's rows have the operator's row type");
        let pending = r.pending.first().map(|(t, _)| t.saturating_add(self.grace));
        // Old versions are pruned when the second newest falls behind the horizon.
        let prune = if r.versions.len() > 1 {
            Some(r.versions[1].0.saturating_add(self.grace))
        } else {
            None
        };
        match (pending, prune) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        serde_json::to_vec(
            row.downcast_ref::<TableRow<L, V>>()
                .expect("an operator's rows have the operator's row type"),
        )
        .expect("state serializes")
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        let r: TableRow<L, V> =
            serde_json::from_slice(b).map_err(|e| StreamError::State(e.to_string()))?;
        Ok(Box::new(r))
    }
}
