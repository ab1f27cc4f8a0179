//! The aggregating operators: per-key running aggregates, fixed windows (tumbling,
//! hopping), sliding and session windows, and the stateless pass-through.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::agg::Aggregator;
use super::engine::{Cx, Operator, ResultKind, Row, Value};
use super::window::{Emit, Kind, WindowBounds, WindowSpec};
use super::{Millis, StreamError};

pub(crate) fn take<T: 'static>(value: Value) -> T {
    *value
        .downcast::<T>()
        .expect("a stream's records have the stream's type")
}

/// The key's state in this operator, made with `init` when it has none.
pub(crate) fn row_or<R: Send + 'static>(row: &mut Option<Row>, init: impl FnOnce() -> R) -> &mut R {
    row.get_or_insert_with(|| Box::new(init()))
        .downcast_mut::<R>()
        .expect("an operator's rows have the operator's row type")
}

/// The key's state in this operator, when it has some.
pub(crate) fn row_mut<R: 'static>(row: &mut Option<Row>) -> Option<&mut R> {
    row.as_mut().map(|r| {
        r.downcast_mut::<R>()
            .expect("an operator's rows have the operator's row type")
    })
}

fn row_ref<R: 'static>(row: &Row) -> &R {
    row.downcast_ref::<R>()
        .expect("an operator's rows have the operator's row type")
}

fn to_json<S: Serialize>(v: &S) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn encode_json<S: Serialize>(v: &S) -> Vec<u8> {
    serde_json::to_vec(v).expect("state serializes")
}

fn decode_json<S: DeserializeOwned>(b: &[u8]) -> Result<S, StreamError> {
    serde_json::from_slice(b).map_err(|e| StreamError::State(e.to_string()))
}

/// Records straight to the sink, as they are.
pub(crate) struct PassThrough<T>(pub PhantomData<fn(T)>);

impl<T: Serialize + Send + 'static> Operator for PassThrough<T> {
    fn stateful(&self) -> bool {
        false
    }
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        _: &mut Option<Row>,
        _: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let v: T = take(value);
        cx.emit(key, None, time, ResultKind::Record, to_json(&v));
        Ok(())
    }
    fn on_watermark(&self, _: &mut Cx<'_>, _: &str, _: &mut Option<Row>) {}
    fn due(&self, _: &Row) -> Option<Millis> {
        None
    }
    fn encode(&self, _: &Row) -> Vec<u8> {
        Vec::new()
    }
    fn decode(&self, _: &[u8]) -> Result<Row, StreamError> {
        Ok(Box::new(()))
    }
}

/// A running aggregate per key (no window): emits the new value on every record.
pub(crate) struct Running<T, G: Aggregator<T>> {
    pub agg: G,
    pub _t: PhantomData<fn(T)>,
}

impl<T, G> Operator for Running<T, G>
where
    T: Send + 'static,
    G: Aggregator<T>,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        _: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let v: T = take(value);
        let acc = row_or(row, || self.agg.init());
        self.agg.add(acc, &v);
        cx.emit(key, None, time, ResultKind::Update, to_json(acc));
        Ok(())
    }
    fn on_watermark(&self, _: &mut Cx<'_>, _: &str, _: &mut Option<Row>) {}
    fn due(&self, _: &Row) -> Option<Millis> {
        None
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        encode_json(row_ref::<G::Acc>(row))
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        Ok(Box::new(decode_json::<G::Acc>(b)?))
    }
}

/// One window of a key.
#[derive(Clone, Serialize, Deserialize)]
struct Win<A> {
    s: Millis,
    e: Millis,
    acc: A,
    /// Closed (its result emitted), kept for corrections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    closed: bool,
}

/// A key's open (and, with corrections, recently closed) windows, by start.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "A: Serialize + DeserializeOwned")]
struct WinRow<A> {
    w: Vec<Win<A>>,
}

/// Tumbling and hopping windows.
pub(crate) struct Windowed<T, G: Aggregator<T>> {
    pub spec: WindowSpec,
    pub emit: Emit,
    pub agg: G,
    pub _t: PhantomData<fn(T)>,
}

impl<T, G: Aggregator<T>> Windowed<T, G> {
    fn close_at(&self, w: &Win<G::Acc>) -> Millis {
        let close = w.e.saturating_add(self.spec.grace);
        if w.closed {
            close.saturating_add(self.spec.retain.unwrap_or(0))
        } else {
            close
        }
    }
}

impl<T, G> Operator for Windowed<T, G>
where
    T: Serialize + Send + 'static,
    G: Aggregator<T>,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        _: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let v: T = take(value);
        let r = row_or(row, || WinRow::<G::Acc> { w: Vec::new() });
        let grace = self.spec.grace;
        let mut late = false;
        for b in self.spec.windows_of(time) {
            let closed = b.end.saturating_add(grace) <= cx.wm;
            let idx = r.w.binary_search_by(|w| (w.s, w.e).cmp(&(b.start, b.end)));
            if closed {
                late = true;
                // A correction for a window whose result is still kept.
                if let Ok(i) = idx {
                    let w = &mut r.w[i];
                    if w.closed {
                        let before = to_json(&w.acc);
                        self.agg.add(&mut w.acc, &v);
                        let last = b.end - 1;
                        cx.emit(key, Some(b), last, ResultKind::Retraction, before);
                        cx.emit(key, Some(b), last, ResultKind::Correction, to_json(&w.acc));
                    }
                }
                continue;
            }
            let i = match idx {
                Ok(i) => i,
                Err(i) => {
                    r.w.insert(
                        i,
                        Win {
                            s: b.start,
                            e: b.end,
                            acc: self.agg.init(),
                            closed: false,
                        },
                    );
                    i
                }
            };
            let w = &mut r.w[i];
            self.agg.add(&mut w.acc, &v);
            if self.emit == Emit::OnUpdate {
                cx.emit(key, Some(b), b.end - 1, ResultKind::Update, to_json(&w.acc));
            }
        }
        if late {
            cx.late(key, time, to_json(&v));
        }
        if r.w.is_empty() {
            *row = None;
        }
        Ok(())
    }

    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>) {
        let Some(r) = row_mut::<WinRow<G::Acc>>(row) else {
            return;
        };
        let wm = cx.wm;
        let grace = self.spec.grace;
        let keep_closed = self.spec.retain.is_some();
        let mut i = 0;
        while i < r.w.len() {
            let w = &mut r.w[i];
            if !w.closed && w.e.saturating_add(grace) <= wm {
                let b = WindowBounds {
                    start: w.s,
                    end: w.e,
                };
                if self.emit == Emit::OnClose {
                    cx.emit(key, Some(b), w.e - 1, ResultKind::Final, to_json(&w.acc));
                }
                w.closed = true;
                if !keep_closed {
                    r.w.remove(i);
                    continue;
                }
            }
            let w = &r.w[i];
            if w.closed && self.close_at(w) <= wm {
                r.w.remove(i);
                continue;
            }
            i += 1;
        }
        if r.w.is_empty() {
            *row = None;
        }
    }

    fn due(&self, row: &Row) -> Option<Millis> {
        row_ref::<WinRow<G::Acc>>(row)
            .w
            .iter()
            .map(|w| self.close_at(w))
            .min()
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        encode_json(row_ref::<WinRow<G::Acc>>(row))
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        Ok(Box::new(decode_json::<WinRow<G::Acc>>(b)?))
    }
}

/// A key's open sessions, by start.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "A: Serialize + DeserializeOwned")]
struct SessionRow<A> {
    s: Vec<Win<A>>,
}

/// Session windows: `[first, last + gap)`, merged when a record bridges two.
///
/// A record is late when its time plus the grace is at or before the watermark: then no
/// record on time can reach a session that has closed, so a closed session never changes.
pub(crate) struct Sessions<T, G: Aggregator<T>> {
    pub gap: Millis,
    pub grace: Millis,
    pub emit: Emit,
    pub agg: G,
    pub _t: PhantomData<fn(T)>,
}

impl<T, G> Operator for Sessions<T, G>
where
    T: Serialize + Send + 'static,
    G: Aggregator<T>,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        _: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let v: T = take(value);
        if time.saturating_add(self.grace) <= cx.wm {
            cx.late(key, time, to_json(&v));
            return Ok(());
        }
        let r = row_or(row, || SessionRow::<G::Acc> { s: Vec::new() });
        let (mut s, mut e) = (time, time.saturating_add(self.gap));
        let mut acc = self.agg.init();
        self.agg.add(&mut acc, &v);
        let mut kept = Vec::with_capacity(r.s.len());
        for old in r.s.drain(..) {
            if old.s < e && s < old.e {
                if self.emit == Emit::OnUpdate {
                    let b = WindowBounds {
                        start: old.s,
                        end: old.e,
                    };
                    cx.emit(
                        key,
                        Some(b),
                        old.e - 1,
                        ResultKind::Retraction,
                        to_json(&old.acc),
                    );
                }
                s = s.min(old.s);
                e = e.max(old.e);
                let mut merged = old.acc;
                // Merge in time order: the older session's accumulator first.
                let newer = std::mem::replace(&mut acc, self.agg.init());
                let ok = self.agg.merge(&mut merged, newer);
                debug_assert!(ok, "session windows need a mergeable aggregation");
                acc = merged;
            } else {
                kept.push(old);
            }
        }
        let pos = kept.partition_point(|w| w.s < s);
        kept.insert(
            pos,
            Win {
                s,
                e,
                acc,
                closed: false,
            },
        );
        r.s = kept;
        if self.emit == Emit::OnUpdate {
            let w = &r.s[pos];
            cx.emit(
                key,
                Some(WindowBounds { start: s, end: e }),
                e - 1,
                ResultKind::Update,
                to_json(&w.acc),
            );
        }
        Ok(())
    }

    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>) {
        let Some(r) = row_mut::<SessionRow<G::Acc>>(row) else {
            return;
        };
        let wm = cx.wm;
        let grace = self.grace;
        r.s.retain(|w| {
            if w.e.saturating_add(grace) <= wm {
                if self.emit == Emit::OnClose {
                    let b = WindowBounds {
                        start: w.s,
                        end: w.e,
                    };
                    cx.emit(key, Some(b), w.e - 1, ResultKind::Final, to_json(&w.acc));
                }
                false
            } else {
                true
            }
        });
        if r.s.is_empty() {
            *row = None;
        }
    }

    fn due(&self, row: &Row) -> Option<Millis> {
        row_ref::<SessionRow<G::Acc>>(row)
            .s
            .iter()
            .map(|w| w.e.saturating_add(self.grace))
            .min()
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        encode_json(row_ref::<SessionRow<G::Acc>>(row))
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        Ok(Box::new(decode_json::<SessionRow<G::Acc>>(b)?))
    }
}

/// A key's recent records and the ends of its open sliding windows.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
struct SlideRow<T> {
    /// Records by time (arrival order among equal times).
    ev: Vec<(Millis, T)>,
    /// Open windows' ends (distinct record times), ascending.
    ends: Vec<Millis>,
}

/// Sliding windows: for every distinct record time `t` of a key, `(t - size, t]`.
pub(crate) struct Sliding<T, G: Aggregator<T>> {
    pub size: Millis,
    pub grace: Millis,
    pub emit: Emit,
    pub agg: G,
    pub _t: PhantomData<fn(T)>,
}

impl<T, G: Aggregator<T>> Sliding<T, G> {
    fn window(&self, r: &SlideRow<T>, end: Millis) -> G::Acc {
        let mut acc = self.agg.init();
        let from = end.saturating_sub(self.size);
        let i = r.ev.partition_point(|(t, _)| *t <= from);
        for (t, v) in &r.ev[i..] {
            if *t > end {
                break;
            }
            self.agg.add(&mut acc, v);
        }
        acc
    }

    fn prune(&self, r: &mut SlideRow<T>, wm: Millis) {
        // A record is needed while an open window or a record still on time could hold it.
        let horizon = r
            .ends
            .first()
            .copied()
            .unwrap_or(Millis::MAX)
            .min(wm.saturating_sub(self.grace))
            .saturating_sub(self.size);
        let i = r.ev.partition_point(|(t, _)| *t <= horizon);
        r.ev.drain(..i);
    }
}

impl<T, G> Operator for Sliding<T, G>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    G: Aggregator<T>,
{
    fn on_record(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        row: &mut Option<Row>,
        _: u8,
        time: Millis,
        value: Value,
    ) -> Result<(), StreamError> {
        let v: T = take(value);
        if time.saturating_add(self.grace) <= cx.wm {
            cx.late(key, time, to_json(&v));
            return Ok(());
        }
        let r = row_or(row, || SlideRow::<T> {
            ev: Vec::new(),
            ends: Vec::new(),
        });
        let i = r.ev.partition_point(|(t, _)| *t <= time);
        r.ev.insert(i, (time, v));
        if let Err(i) = r.ends.binary_search(&time) {
            r.ends.insert(i, time);
        }
        if self.emit == Emit::OnUpdate {
            let upto = time.saturating_add(self.size);
            let ends: Vec<Millis> = r
                .ends
                .iter()
                .copied()
                .filter(|e| *e >= time && *e < upto)
                .collect();
            for e in ends {
                let acc = self.window(r, e);
                let b = WindowBounds {
                    start: e.saturating_sub(self.size) + 1,
                    end: e + 1,
                };
                cx.emit(key, Some(b), e, ResultKind::Update, to_json(&acc));
            }
        }
        Ok(())
    }

    fn on_watermark(&self, cx: &mut Cx<'_>, key: &str, row: &mut Option<Row>) {
        let Some(r) = row_mut::<SlideRow<T>>(row) else {
            return;
        };
        let wm = cx.wm;
        while let Some(&e) = r.ends.first() {
            if e.saturating_add(self.grace) > wm {
                break;
            }
            if self.emit == Emit::OnClose {
                let acc = self.window(r, e);
                let b = WindowBounds {
                    start: e.saturating_sub(self.size) + 1,
                    end: e + 1,
                };
                cx.emit(key, Some(b), e, ResultKind::Final, to_json(&acc));
            }
            r.ends.remove(0);
        }
        self.prune(r, wm);
        if r.ev.is_empty() && r.ends.is_empty() {
            *row = None;
        }
    }

    fn due(&self, row: &Row) -> Option<Millis> {
        let r = row_ref::<SlideRow<T>>(row);
        match r.ends.first() {
            Some(e) => Some(e.saturating_add(self.grace)),
            None => {
                r.ev.last()
                    .map(|(t, _)| t.saturating_add(self.size).saturating_add(self.grace))
            }
        }
    }
    fn encode(&self, row: &Row) -> Vec<u8> {
        encode_json(row_ref::<SlideRow<T>>(row))
    }
    fn decode(&self, b: &[u8]) -> Result<Row, StreamError> {
        Ok(Box::new(decode_json::<SlideRow<T>>(b)?))
    }
}

/// The operator for an aggregation over `spec` (or none).
pub(crate) fn aggregating<T, G>(
    spec: Option<WindowSpec>,
    emit: Emit,
    agg: G,
) -> Result<Box<dyn Operator>, StreamError>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    G: Aggregator<T>,
{
    let Some(spec) = spec else {
        return Ok(Box::new(Running {
            agg,
            _t: PhantomData,
        }));
    };
    spec.validate()?;
    Ok(match spec.kind {
        Kind::Tumbling { .. } | Kind::Hopping { .. } => Box::new(Windowed {
            spec,
            emit,
            agg,
            _t: PhantomData,
        }),
        Kind::Sliding { size } => Box::new(Sliding {
            size,
            grace: spec.grace,
            emit,
            agg,
            _t: PhantomData,
        }),
        Kind::Session { gap } => {
            let mut probe = agg.init();
            if !agg.merge(&mut probe, agg.init()) {
                return Err(StreamError::Definition(
                    "a session window merges sessions: its aggregation must merge (use \
                     Agg::count, sum, min, max or Agg::fold_merge)"
                        .into(),
                ));
            }
            Box::new(Sessions {
                gap,
                grace: spec.grace,
                emit,
                agg,
                _t: PhantomData,
            })
        }
    })
}
