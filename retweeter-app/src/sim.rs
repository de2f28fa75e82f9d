//! The embedded simulator: a deterministic stand-in for the Twitter API.
//!
//! Everything follows from the seed. Each tweet has an author (from a small
//! pool, so authors have several tweets) and accrues retweets over simulated
//! time, measured in ticks since its first retweet: one at tick 1, then the
//! count doubles each tick until the tweet reaches its peak rate, after which
//! it slowly fades. Retweeters come from a shared pool where a few heavy
//! retweeters are much more likely than the rest (so the report has a shape),
//! and nobody retweets the same tweet twice.
//!
//! A poll returns the most recent `count` retweets, newest first, so
//! successive polls overlap as they do against the real API. Each tweet has
//! its own clock: every poll of a tweet sees it one tick later than the
//! previous poll did, which makes runs reproducible whatever the order and
//! timing of the requests.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Users in the shared retweeter pool.
const POOL: u64 = 48;
/// Authors that watched tweets are drawn from.
const AUTHORS: u64 = 5;

/// One simulated retweet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRetweet {
    /// The retweet's own status id.
    pub id: i64,
    /// Who retweeted.
    pub retweeter: i64,
    /// The tick at which it happened.
    pub tick: u64,
}

/// What a poll of one tweet sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPoll {
    /// The tweet's author.
    pub author: i64,
    /// The simulated time of this poll.
    pub tick: u64,
    /// The most recent retweets, newest first.
    pub retweets: Vec<SimRetweet>,
}

/// The simulator. Cheap to share: all state is behind a mutex.
#[derive(Debug)]
pub struct Simulator {
    seed: u64,
    start: u64,
    tweets: Mutex<HashMap<i64, TweetState>>,
}

#[derive(Debug)]
struct TweetState {
    /// Polls served so far.
    polls: u64,
    /// Retweets generated so far, oldest first.
    retweets: Vec<SimRetweet>,
    /// The last tick generated.
    through: u64,
    used: HashSet<i64>,
    rng: SplitMix,
    peak: u64,
    peaked: bool,
    /// Retweets per tick once the peak is reached (fades by 15% per tick).
    rate: u64,
}

impl Simulator {
    /// A simulator whose tweets are first polled at tick `start` (at least 1).
    pub fn new(seed: u64, start: u64) -> Simulator {
        Simulator { seed, start: start.max(1), tweets: Mutex::new(HashMap::new()) }
    }

    /// The author of a tweet.
    pub fn author_of(&self, tweet: i64) -> i64 {
        author(self.seed, tweet)
    }

    /// Polls a tweet: advances its clock by one tick and returns its most
    /// recent `count` retweets, newest first.
    pub fn poll(&self, tweet: i64, count: usize) -> SimPoll {
        let mut tweets = self.tweets.lock().unwrap_or_else(|e| e.into_inner());
        let state = tweets.entry(tweet).or_insert_with(|| TweetState::new(self.seed, tweet));
        let tick = self.start + state.polls;
        state.polls += 1;
        state.generate_through(self.seed, tweet, tick);
        let visible = state.retweets.partition_point(|r| r.tick <= tick);
        let retweets = state.retweets[..visible].iter().rev().take(count).copied().collect();
        SimPoll { author: self.author_of(tweet), tick, retweets }
    }
}

impl TweetState {
    fn new(seed: u64, tweet: i64) -> TweetState {
        let mut rng = SplitMix::new(mix(seed, tweet as u64, 0x7477_6565));
        let peak = 8 + rng.below(33);
        TweetState {
            polls: 0,
            retweets: Vec::new(),
            through: 0,
            used: HashSet::new(),
            rng,
            peak,
            peaked: false,
            rate: 0,
        }
    }

    fn generate_through(&mut self, seed: u64, tweet: i64, tick: u64) {
        while self.through < tick {
            self.through += 1;
            let t = self.through;
            // Doubling: 1, 1, 2, 4, ... new retweets (1, 2, 4, 8 in total) until the peak.
            let doubling = if t == 1 { 1 } else { 1u64 << (t - 2).min(62) };
            let new = if !self.peaked && doubling < self.peak {
                doubling
            } else {
                if self.peaked {
                    self.rate = self.rate * 85 / 100;
                } else {
                    self.peaked = true;
                    self.rate = self.peak;
                }
                // Jitter between half and one and a half times the rate.
                self.rate * (50 + self.rng.below(101)) / 100
            };
            for _ in 0..new {
                let n = self.retweets.len() as u64;
                let retweeter = self.pick_retweeter(seed, tweet, n);
                let id = status_id(seed, tweet, n);
                self.retweets.push(SimRetweet { id, retweeter, tick: t });
            }
        }
    }

    /// A retweeter who has not retweeted this tweet yet: from the shared
    /// pool, heavy retweeters first, else a one-off user.
    fn pick_retweeter(&mut self, seed: u64, tweet: i64, n: u64) -> i64 {
        for _ in 0..8 {
            let r = self.rng.below(1000);
            let index = POOL * r * r / 1_000_000;
            let user = pool_user(seed, index);
            if self.used.insert(user) {
                return user;
            }
        }
        if let Some(user) = (0..POOL).map(|i| pool_user(seed, i)).find(|u| !self.used.contains(u)) {
            self.used.insert(user);
            return user;
        }
        let user = one_off_user(seed, tweet, n);
        self.used.insert(user);
        user
    }
}

/// A tweet's author: one of a few accounts with old, short ids.
fn author(seed: u64, tweet: i64) -> i64 {
    let index = mix(seed, tweet as u64, 0x6175_7468) % AUTHORS;
    (100_000 + mix(seed, index, 0x6964) % 90_000_000) as i64
}

/// User `index` of the retweeter pool. Three in four have 19-digit ids, as
/// accounts created since 2016 do: above 2^53, so a client that reads ids
/// through f64 gets them wrong.
fn pool_user(seed: u64, index: u64) -> i64 {
    let h = mix(seed, index, 0x706f_6f6c);
    if index.is_multiple_of(4) {
        (1_000_000 + h % 900_000_000) as i64
    } else {
        (1_200_000_000_000_000_000 + h % 400_000_000_000_000_000) as i64
    }
}

/// A user outside the pool, unique per tweet and retweet number.
fn one_off_user(seed: u64, tweet: i64, n: u64) -> i64 {
    (1_600_000_000_000_000_000 + mix(seed, tweet as u64, n) % 100_000_000_000_000_000) as i64
}

fn status_id(seed: u64, tweet: i64, n: u64) -> i64 {
    (1_700_000_000_000_000_000 + mix(seed ^ 0x7274, tweet as u64, n) % 100_000_000_000_000_000) as i64
}

/// A stable hash of three numbers (SplitMix64 finaliser).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut s = SplitMix::new(a ^ b.rotate_left(21) ^ c.rotate_left(42));
    s.next() ^ s.next()
}

/// SplitMix64: a tiny, good-enough deterministic generator.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), up to a negligible bias.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_show_one_two_four() {
        let sim = Simulator::new(42, 1);
        let totals: Vec<usize> = (0..3).map(|_| sim.poll(7, 100).retweets.len()).collect();
        assert_eq!(totals, [1, 2, 4]);
    }

    #[test]
    fn polls_overlap_and_are_newest_first() {
        let sim = Simulator::new(1, 1);
        let first = sim.poll(99, 100);
        let second = sim.poll(99, 100);
        assert!(second.retweets.ends_with(&first.retweets));
        assert!(second.retweets.windows(2).all(|w| w[0].tick >= w[1].tick));
        let limited = Simulator::new(1, 1);
        limited.poll(99, 2);
        limited.poll(99, 2);
        let third = limited.poll(99, 2);
        assert_eq!(third.retweets.len(), 2);
    }

    #[test]
    fn deterministic_and_unique_per_tweet() {
        let a = Simulator::new(5, 1);
        let b = Simulator::new(5, 1);
        for _ in 0..12 {
            assert_eq!(a.poll(123, 100), b.poll(123, 100));
        }
        for _ in 0..30 {
            a.poll(123, 100);
        }
        let all = a.poll(123, usize::MAX).retweets;
        let distinct: HashSet<i64> = all.iter().map(|r| r.retweeter).collect();
        assert_eq!(distinct.len(), all.len());
        assert!(all.len() > POOL as usize, "the pool runs out and one-off users appear: {}", all.len());
        assert_ne!(Simulator::new(6, 1).poll(123, 100), Simulator::new(5, 1).poll(123, 100).clone());
    }

    #[test]
    fn start_tick_skips_ahead() {
        let sim = Simulator::new(42, 3);
        assert_eq!(sim.poll(7, 100).retweets.len(), 4);
    }

    #[test]
    fn some_ids_need_64_bits() {
        let sim = Simulator::new(42, 1);
        let big = (0..6).flat_map(|_| sim.poll(1, 100).retweets).any(|r| r.retweeter > (1 << 53));
        assert!(big);
    }
}
