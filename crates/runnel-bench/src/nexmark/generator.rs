//! A deterministic Nexmark-style event generator: persons, auctions and bids in the
//! standard mix, event times advancing at a fixed rate with bounded disorder, and the hot
//! auctions, bidders and sellers that make the Nexmark queries' keys skewed.
//!
//! Event `n` is a function of `n` alone (its own random stream), so any range of events can
//! be generated on its own and every run sees the same events.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use runnel::core::{EventId, Metadata, Position, RecordedEvent, StreamName};

/// Of every 50 events: 1 person, 3 auctions, 46 bids (2%, 6%, 92%).
pub const PERSONS_PER_EPOCH: u64 = 1;
pub const AUCTIONS_PER_EPOCH: u64 = 3;
pub const EVENTS_PER_EPOCH: u64 = 50;
/// Event time advances this much per event: 10,000 events per second of event time.
pub const EVENT_SPACING_US: i64 = 100;
/// Each event's time is up to this much older than its slot: the bounded disorder.
pub const DISORDER_MS_MAX: i64 = 500;
/// The jobs' out-of-orderness: the disorder, plus the 100 ms of event time a group of 1000
/// events spans (the store tier appends each group as one append per type, which reorders
/// the group's events by type), with room to spare — no event is late.
pub const OUT_OF_ORDERNESS_MS: i64 = 1000;
const _: () = assert!(DISORDER_MS_MAX + 100 < OUT_OF_ORDERNESS_MS);
/// Ids start here, as in Nexmark.
pub const FIRST_PERSON_ID: u64 = 1000;
pub const FIRST_AUCTION_ID: u64 = 1000;
/// Hot keys: the first of every 100 recent persons or auctions…
const HOT_GROUP: u64 = 100;
/// …is the auction of 1 bid in 2, the bidder of 3 bids in 4, the seller of 3 auctions in 4.
const HOT_AUCTION_ONE_IN: u64 = 2;
const HOT_BIDDER_ONE_IN: u64 = 4;
const HOT_SELLER_ONE_IN: u64 = 4;
/// The other bids go to one of the last 100 auctions, from one of the last 1000 persons.
const AUCTIONS_IN_FLIGHT: u64 = 100;
const PERSONS_ACTIVE: u64 = 1000;
const SEED: u64 = 0x6e65_786d_6172_6b21;

const FIRST_NAMES: [&str; 8] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie",
];
const LAST_NAMES: [&str; 8] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
];
const CITIES: [&str; 6] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// A new person. `dateTime` comes first in every payload, so a job can read the event time
/// without decoding the rest ([`event_time_ms`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Person {
    #[serde(rename = "dateTime")]
    pub date_time: i64,
    pub id: u64,
    pub name: String,
    #[serde(rename = "emailAddress")]
    pub email_address: String,
    #[serde(rename = "creditCard")]
    pub credit_card: String,
    pub city: String,
    pub state: String,
}

/// A new auction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Auction {
    #[serde(rename = "dateTime")]
    pub date_time: i64,
    pub id: u64,
    #[serde(rename = "itemName")]
    pub item_name: String,
    #[serde(rename = "initialBid")]
    pub initial_bid: u64,
    pub reserve: u64,
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
}

/// A bid (price in cents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bid {
    #[serde(rename = "dateTime")]
    pub date_time: i64,
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
}

/// One generated event.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The type, which is also the category of the event's stream (`Bid-…`): jobs read
    /// their events by category, which the store's `(category, position)` index serves.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Person(_) => "Person",
            Event::Auction(_) => "Auction",
            Event::Bid(_) => "Bid",
        }
    }

    #[cfg(test)]
    pub fn time_ms(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        let bytes = match self {
            Event::Person(p) => serde_json::to_vec(p),
            Event::Auction(a) => serde_json::to_vec(a),
            Event::Bid(b) => serde_json::to_vec(b),
        };
        bytes.expect("plain structs serialize")
    }
}

/// The time of the first event: 2026-01-01T00:00:00Z, the test driver's epoch.
pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// splitmix64: small, fast, and good enough to pick keys and prices.
struct Rng(u64);

impl Rng {
    fn for_event(n: u64) -> Rng {
        Rng(SEED ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The event numbered `n` (from 0).
pub fn event(n: u64) -> Event {
    let mut rng = Rng::for_event(n);
    let epoch = n / EVENTS_PER_EPOCH;
    let offset = n % EVENTS_PER_EPOCH;
    let slot_ms = (n as i64 * EVENT_SPACING_US) / 1000;
    let time =
        base_time().timestamp_millis() + slot_ms - rng.below(DISORDER_MS_MAX as u64 + 1) as i64;
    // Persons and auctions so far, counting this epoch's (offset 0 is its person, 1..=3
    // its auctions): the newest ids a bid or an auction can refer to.
    let persons = epoch * PERSONS_PER_EPOCH + 1;
    let auctions = epoch * AUCTIONS_PER_EPOCH + offset.min(AUCTIONS_PER_EPOCH);
    if offset < PERSONS_PER_EPOCH {
        let id = FIRST_PERSON_ID + persons - 1;
        let first = FIRST_NAMES[rng.below(8) as usize];
        let last = LAST_NAMES[rng.below(8) as usize];
        let city = rng.below(6) as usize;
        Event::Person(Person {
            date_time: time,
            id,
            name: format!("{first} {last}"),
            email_address: format!("{}@{}.com", first.to_lowercase(), last.to_lowercase()),
            credit_card: format!(
                "{:04} {:04} {:04} {:04}",
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000)
            ),
            city: CITIES[city].into(),
            state: STATES[rng.below(6) as usize].into(),
        })
    } else if offset < PERSONS_PER_EPOCH + AUCTIONS_PER_EPOCH {
        let id = FIRST_AUCTION_ID + auctions - 1;
        let seller = if rng.below(HOT_SELLER_ONE_IN) > 0 {
            hot(persons)
        } else {
            recent(&mut rng, persons, PERSONS_ACTIVE)
        };
        let initial_bid = price(&mut rng);
        Event::Auction(Auction {
            date_time: time,
            id,
            item_name: format!("item-{}", rng.below(100_000)),
            initial_bid,
            reserve: initial_bid + price(&mut rng),
            expires: time + 10_000 + rng.below(20_000) as i64,
            seller: FIRST_PERSON_ID + seller,
            category: 10 + rng.below(5),
        })
    } else {
        let auction = if rng.below(HOT_AUCTION_ONE_IN) > 0 {
            hot(auctions)
        } else {
            recent(&mut rng, auctions, AUCTIONS_IN_FLIGHT)
        };
        let bidder = if rng.below(HOT_BIDDER_ONE_IN) > 0 {
            (hot(persons) + 1).min(persons - 1)
        } else {
            recent(&mut rng, persons, PERSONS_ACTIVE)
        };
        Event::Bid(Bid {
            date_time: time,
            auction: FIRST_AUCTION_ID + auction,
            bidder: FIRST_PERSON_ID + bidder,
            price: price(&mut rng),
            channel: CHANNELS[rng.below(4) as usize].into(),
            url: format!("https://www.nexmark.com/item.htm?query={}", rng.below(1000)),
        })
    }
}

/// The hot one of the newest `count` (0-based): the first of the newest group of 100.
fn hot(count: u64) -> u64 {
    ((count - 1) / HOT_GROUP) * HOT_GROUP
}

/// One of the newest `window` of `count` (0-based).
fn recent(rng: &mut Rng, count: u64, window: u64) -> u64 {
    count - 1 - rng.below(window.min(count))
}

/// Prices spread over six orders of magnitude, in cents, as in Nexmark.
fn price(rng: &mut Rng) -> u64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64
}

/// Events `from..to` as recorded events on the streams `Person-1`, `Auction-1` and
/// `Bid-1`, positions `from + 1..` (their `recorded_at` is the base time: the jobs read
/// event time from the payload).
pub fn recorded(from: u64, to: u64) -> Vec<RecordedEvent> {
    let recorded_at = base_time();
    let streams = ["Person-1", "Auction-1", "Bid-1"]
        .map(|s| StreamName::new(s).expect("a valid stream name"));
    (from..to)
        .map(|n| {
            let e = event(n);
            let stream = match e {
                Event::Person(_) => &streams[0],
                Event::Auction(_) => &streams[1],
                Event::Bid(_) => &streams[2],
            };
            RecordedEvent {
                id: EventId::new(),
                stream: stream.clone(),
                revision: n + 1,
                position: Position(n + 1),
                recorded_at,
                event_type: e.event_type().to_string(),
                schema_version: 1,
                content_type: "application/json".into(),
                data: e.to_json(),
                metadata: Metadata::default(),
            }
        })
        .collect()
}

/// The event time of a payload this generator wrote: `{"dateTime":<ms>,…` read without
/// decoding the rest, or `None` for any other payload.
pub fn event_time_ms(data: &[u8]) -> Option<i64> {
    let rest = data.strip_prefix(b"{\"dateTime\":")?;
    let (negative, digits) = match rest.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, rest),
    };
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 18 || !matches!(digits.get(len), Some(b',' | b'}')) {
        return None;
    }
    let value = digits[..len]
        .iter()
        .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_two_six_ninety_two_percent() {
        let (mut p, mut a, mut b) = (0, 0, 0);
        for n in 0..10_000 {
            match event(n) {
                Event::Person(_) => p += 1,
                Event::Auction(_) => a += 1,
                Event::Bid(_) => b += 1,
            }
        }
        assert_eq!((p, a, b), (200, 600, 9_200));
    }

    #[test]
    fn events_are_deterministic_and_refer_only_to_earlier_entities() {
        assert_eq!(event(12_345), event(12_345));
        let mut persons = 0;
        let mut auctions = 0;
        for n in 0..20_000 {
            match event(n) {
                Event::Person(p) => {
                    assert_eq!(p.id, FIRST_PERSON_ID + persons);
                    persons += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, FIRST_AUCTION_ID + auctions);
                    assert!(a.seller < FIRST_PERSON_ID + persons);
                    auctions += 1;
                }
                Event::Bid(b) => {
                    assert!(b.auction < FIRST_AUCTION_ID + auctions);
                    assert!(b.bidder < FIRST_PERSON_ID + persons);
                }
            }
        }
    }

    #[test]
    fn disorder_is_bounded_by_the_out_of_orderness() {
        let mut newest = i64::MIN;
        let mut behind = 0;
        for n in 0..100_000 {
            let t = event(n).time_ms();
            assert!(
                t >= newest.saturating_sub(DISORDER_MS_MAX),
                "event {n} is too late"
            );
            if t < newest {
                behind += 1;
            }
            newest = newest.max(t);
        }
        assert!(
            behind > 10_000,
            "the events are out of order ({behind} behind)"
        );
    }

    #[test]
    fn hot_auctions_take_about_half_the_bids() {
        let mut per_auction = std::collections::HashMap::<u64, u64>::new();
        let mut bids = 0;
        for n in 0..100_000 {
            if let Event::Bid(b) = event(n) {
                *per_auction.entry(b.auction).or_default() += 1;
                bids += 1;
            }
        }
        let hot: u64 = per_auction
            .iter()
            .filter(|(a, _)| (*a - FIRST_AUCTION_ID) % HOT_GROUP == 0)
            .map(|(_, c)| c)
            .sum();
        assert!(hot * 100 / bids >= 45, "{hot} of {bids}");
    }

    #[test]
    fn the_event_time_is_read_from_the_payload_prefix() {
        let e = event(7);
        assert_eq!(event_time_ms(&e.to_json()), Some(e.time_ms()));
        assert_eq!(event_time_ms(b"{\"dateTime\":-5}"), Some(-5));
        assert_eq!(event_time_ms(b"{\"other\":1}"), None);
        assert_eq!(event_time_ms(b"{\"dateTime\":12x}"), None);
    }
}
