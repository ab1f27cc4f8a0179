//! Aggregations: count, sum, min, max and folds over a key's records.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An aggregation of records of type `T` into an accumulator that is kept as state (so it
/// serializes) and emitted as the result.
pub trait Aggregator<T>: Send + Sync + 'static {
    /// The accumulator, which is also the result.
    type Acc: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The accumulator of no records.
    fn init(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, acc: &mut Self::Acc, value: &T);
    /// Merges `other` into `acc` (session windows merge when a record bridges two).
    /// `false`: this aggregation cannot merge, and cannot serve a session window.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc) -> bool {
        let _ = (acc, other);
        false
    }
}

/// The built-in aggregations.
///
/// ```
/// use runnel::stream::{Agg, Aggregator};
/// let max = Agg::max(|v: &i64| *v);
/// let mut acc = max.init();
/// for v in [3, 9, 4] { max.add(&mut acc, &v); }
/// assert_eq!(acc, Some(9));
/// ```
pub struct Agg;

impl Agg {
    /// How many records.
    pub fn count<T: 'static>() -> Count<T> {
        Count(PhantomData)
    }

    /// The sum of `f` over the records.
    pub fn sum<T: 'static, F: Fn(&T) -> i64 + Send + Sync + 'static>(f: F) -> Sum<T, F> {
        Sum(f, PhantomData)
    }

    /// The smallest `f` (`None` for no records).
    pub fn min<T, V, F>(f: F) -> Extreme<T, V, F>
    where
        T: 'static,
        V: PartialOrd + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> V + Send + Sync + 'static,
    {
        Extreme {
            f,
            max: false,
            _t: PhantomData,
        }
    }

    /// The largest `f` (`None` for no records).
    pub fn max<T, V, F>(f: F) -> Extreme<T, V, F>
    where
        T: 'static,
        V: PartialOrd + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> V + Send + Sync + 'static,
    {
        Extreme {
            f,
            max: true,
            _t: PhantomData,
        }
    }

    /// A fold from `init` with `add`; it cannot serve session windows (use
    /// [`Agg::fold_merge`]).
    pub fn fold<T, A, F>(init: A, add: F) -> Fold<T, A>
    where
        T: 'static,
        A: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut A, &T) + Send + Sync + 'static,
    {
        Fold {
            init,
            add: Arc::new(add),
            merge: None,
        }
    }

    /// A fold that can also merge two accumulators (for session windows).
    pub fn fold_merge<T, A, F, M>(init: A, add: F, merge: M) -> Fold<T, A>
    where
        T: 'static,
        A: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut A, &T) + Send + Sync + 'static,
        M: Fn(&mut A, A) + Send + Sync + 'static,
    {
        Fold {
            init,
            add: Arc::new(add),
            merge: Some(Arc::new(merge)),
        }
    }
}

/// [`Agg::count`].
pub struct Count<T>(PhantomData<fn(&T)>);

impl<T: 'static> Aggregator<T> for Count<T> {
    type Acc = u64;
    fn init(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) -> bool {
        *acc += other;
        true
    }
}

/// [`Agg::sum`].
pub struct Sum<T, F>(F, PhantomData<fn(&T)>);

impl<T: 'static, F: Fn(&T) -> i64 + Send + Sync + 'static> Aggregator<T> for Sum<T, F> {
    type Acc = i64;
    fn init(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, v: &T) {
        *acc = acc.saturating_add((self.0)(v));
    }
    fn merge(&self, acc: &mut i64, other: i64) -> bool {
        *acc = acc.saturating_add(other);
        true
    }
}

/// [`Agg::min`] and [`Agg::max`].
pub struct Extreme<T, V, F> {
    f: F,
    max: bool,
    _t: PhantomData<fn(&T) -> V>,
}

impl<T, V, F> Extreme<T, V, F>
where
    V: PartialOrd,
{
    fn better(&self, new: &V, old: &V) -> bool {
        if self.max {
            new > old
        } else {
            new < old
        }
    }
}

impl<T, V, F> Aggregator<T> for Extreme<T, V, F>
where
    T: 'static,
    V: PartialOrd + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    type Acc = Option<V>;
    fn init(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, v: &T) {
        let v = (self.f)(v);
        match acc {
            Some(old) if !self.better(&v, old) => {}
            _ => *acc = Some(v),
        }
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) -> bool {
        if let Some(v) = other {
            match acc {
                Some(old) if !self.better(&v, old) => {}
                _ => *acc = Some(v),
            }
        }
        true
    }
}

type AddFn<A, T> = Arc<dyn Fn(&mut A, &T) + Send + Sync>;
type MergeFn<A> = Arc<dyn Fn(&mut A, A) + Send + Sync>;

/// [`Agg::fold`] and [`Agg::fold_merge`].
pub struct Fold<T, A> {
    init: A,
    add: AddFn<A, T>,
    merge: Option<MergeFn<A>>,
}

impl<T, A> Aggregator<T> for Fold<T, A>
where
    T: 'static,
    A: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Acc = A;
    fn init(&self) -> A {
        self.init.clone()
    }
    fn add(&self, acc: &mut A, v: &T) {
        (self.add)(acc, v)
    }
    fn merge(&self, acc: &mut A, other: A) -> bool {
        match &self.merge {
            Some(m) => {
                m(acc, other);
                true
            }
            None => false,
        }
    }
}
