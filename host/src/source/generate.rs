//! A generator of realistic Wikimedia `recentchange` events, for offline demos, tests and load.
//!
//! The distributions follow the live stream (see `shared/fixtures/wikimedia/README.md`): event types (mostly
//! edits and categorizations), about a third bots, a few percent of anonymous edits from IPv4 and IPv6
//! addresses, a long tail of wikis led by Wikidata and Commons, namespaces by type, and payloads of 0.7-1.6 kB.
//! Optional faults: duplicate deliveries, malformed JSON, late and far-future timestamps, canaries.
//!
//! Event `i` is a pure function of the seed and `i`, so a stream can be resumed anywhere (`serve-sse` honours
//! `Last-Event-ID` without replaying the generator) and two runs with one seed are byte-identical.

use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// What to generate. Rates are probabilities per event.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    /// Event time of event 0, in ms since the epoch.
    pub start_ms: i64,
    /// Event-time rate: events per second of event time (the live stream averages ~35, peaks near 90).
    pub events_per_s: f64,
    /// A previous event delivered again, verbatim (same `meta.id`).
    pub duplicates: f64,
    /// A line that is not valid JSON.
    pub malformed: f64,
    /// An event whose `meta.dt` is 1-3 hours behind the stream.
    pub late: f64,
    /// An event whose `meta.dt` is 1-30 days ahead.
    pub future: f64,
    /// A canary event (`meta.domain == "canary"`); the live stream has about one an hour.
    pub canary: f64,
    /// Events reach the source's log up to this many ms after their time, in the order they arrive, so
    /// consecutive events carry times out of order, as the live stream's do. Its resume positions are times
    /// (`serve-sse --ids timestamps`), so a client that resumes exactly where it left off skips the events that
    /// came after the last one it read but carry an earlier time.
    pub disorder_ms: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            events_per_s: 35.0,
            duplicates: 0.0,
            malformed: 0.0,
            late: 0.0,
            future: 0.0,
            canary: 0.0,
            disorder_ms: 0,
        }
    }
}

/// One generated event: its position in the source's log and its data line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub offset: u64,
    pub data: String,
    /// Event time (the nominal one, before late / future faults): the time the source's log keeps for it.
    pub time_ms: i64,
}

pub struct Generator {
    config: GenConfig,
    wikis: WeightedIndex<u32>,
    types: WeightedIndex<u32>,
}

/// (wiki, server, weight in the live stream, share of bots on it)
const WIKIS: &[(&str, &str, u32, f64)] = &[
    ("wikidatawiki", "www.wikidata.org", 330, 0.55),
    ("commonswiki", "commons.wikimedia.org", 200, 0.40),
    ("enwiki", "en.wikipedia.org", 120, 0.15),
    ("dewiki", "de.wikipedia.org", 30, 0.15),
    ("frwiki", "fr.wikipedia.org", 30, 0.20),
    ("eswiki", "es.wikipedia.org", 25, 0.15),
    ("jawiki", "ja.wikipedia.org", 20, 0.10),
    ("ruwiki", "ru.wikipedia.org", 20, 0.20),
    ("itwiki", "it.wikipedia.org", 18, 0.15),
    ("zhwiki", "zh.wikipedia.org", 15, 0.15),
    ("ptwiki", "pt.wikipedia.org", 12, 0.15),
    ("fawiki", "fa.wikipedia.org", 10, 0.20),
    ("plwiki", "pl.wikipedia.org", 10, 0.15),
    ("enwiktionary", "en.wiktionary.org", 12, 0.30),
    ("mgwiktionary", "mg.wiktionary.org", 8, 0.95),
    ("metawiki", "meta.wikimedia.org", 6, 0.30),
    ("specieswiki", "species.wikimedia.org", 3, 0.30),
    ("arwiki", "ar.wikipedia.org", 8, 0.20),
    ("kowiki", "ko.wikipedia.org", 6, 0.15),
    ("nlwiki", "nl.wikipedia.org", 6, 0.20),
];

/// Event types and their weights in the live stream.
const TYPES: &[(&str, u32)] = &[("edit", 62), ("categorize", 24), ("log", 9), ("new", 5)];

const WORDS: &[&str] = &[
    "history",
    "river",
    "station",
    "album",
    "species",
    "village",
    "church",
    "football",
    "election",
    "museum",
    "bridge",
    "painting",
    "language",
    "university",
    "mountain",
    "island",
    "novel",
    "film",
    "castle",
    "railway",
];

const USERS: &[&str] = &[
    "Cewbot",
    "BotMultichillT",
    "DeltaBot",
    "SuccuBot",
    "Florentyna",
    "Ymblanter",
    "JJMC89 bot",
    "Kasyap",
    "Jane Doe",
    "Materialscientist",
    "Tagishsimon",
    "Epìdosis",
    "ChristianKl",
    "GZWDer (flood)",
    "Lockal",
    "Quickstatements",
    "Hoo man",
    "Moebeus",
    "Sjoerddebruin",
    "Magnus Manske",
];

impl Generator {
    pub fn new(config: GenConfig) -> Self {
        Generator {
            wikis: WeightedIndex::new(WIKIS.iter().map(|w| w.2)).expect("positive weights"),
            types: WeightedIndex::new(TYPES.iter().map(|t| t.1)).expect("positive weights"),
            config,
        }
    }

    pub fn config(&self) -> &GenConfig {
        &self.config
    }

    fn rng(&self, i: u64, salt: u64) -> ChaCha8Rng {
        // Independent streams per event (and per purpose), from the seed alone.
        let key = self.config.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(32);
        ChaCha8Rng::seed_from_u64(key)
    }

    /// The nominal event time of event `i`: its place in the stream's rate, give or take a jitter too small to
    /// reorder neighbours, less a delay of up to `disorder_ms`, which does.
    pub fn time_ms(&self, i: u64) -> i64 {
        let interval = self.interval_ms();
        let mut rng = self.rng(i, 1);
        let jitter = rng.random_range(-0.4..0.4) * interval;
        let delay = match self.config.disorder_ms {
            0 => 0,
            max => rng.random_range(0..max) as i64,
        };
        // Saturating: `serve-sse` looks up times far along an endless stream.
        self.config
            .start_ms
            .saturating_add((i as f64 * interval + jitter) as i64)
            .saturating_sub(delay)
    }

    /// Event time between two events, in ms.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.config.events_per_s.max(1e-6)
    }

    /// Event `i`.
    pub fn event(&self, i: u64) -> Generated {
        let mut faults = self.rng(i, 2);
        let c = &self.config;
        let time_ms = self.time_ms(i);
        if i > 0 && faults.random_bool(c.duplicates.clamp(0.0, 1.0)) {
            // A redelivery of a recent event, verbatim, under this event's position.
            let back = faults.random_range(1..=i.min(50));
            let original = self.event(i - back);
            return Generated {
                offset: i,
                data: original.data,
                time_ms,
            };
        }
        let malformed = faults.random_bool(c.malformed.clamp(0.0, 1.0));
        let dt_ms = if faults.random_bool(c.late.clamp(0.0, 1.0)) {
            time_ms - faults.random_range(3_600_000..10_800_000)
        } else if faults.random_bool(c.future.clamp(0.0, 1.0)) {
            time_ms + faults.random_range(86_400_000..2_592_000_000)
        } else {
            time_ms
        };
        let canary = faults.random_bool(c.canary.clamp(0.0, 1.0));
        let doc = self.document(i, dt_ms, canary);
        let mut data = doc.to_string();
        if malformed {
            // Cut inside the document: what a truncated or corrupted delivery looks like.
            let cut = faults.random_range(data.len() / 4..data.len() * 3 / 4);
            data.truncate(cut);
            while !data.is_char_boundary(data.len()) {
                data.pop();
            }
        }
        Generated {
            offset: i,
            data,
            time_ms,
        }
    }

    fn document(&self, i: u64, dt_ms: i64, canary: bool) -> Value {
        let mut r = self.rng(i, 3);
        let (wiki, server, _, bot_share) = WIKIS[self.wikis.sample(&mut r)];
        let kind = TYPES[self.types.sample(&mut r)].0;
        let bot = r.random_bool(bot_share);
        let anonymous = !bot && r.random_bool(0.08);
        let user = if anonymous {
            if r.random_bool(0.6) {
                format!(
                    "{}.{}.{}.{}",
                    r.random_range(1..224),
                    r.random::<u8>(),
                    r.random::<u8>(),
                    r.random::<u8>()
                )
            } else {
                format!(
                    "2a02:{:x}:{:x}:{:x}::{:x}",
                    r.random::<u16>(),
                    r.random::<u16>(),
                    r.random::<u16>(),
                    r.random::<u16>()
                )
            }
        } else {
            USERS[r.random_range(0..USERS.len())].to_string()
        };
        let namespace: i64 = match kind {
            "categorize" => 14,
            _ if wiki == "commonswiki" && r.random_bool(0.7) => 6,
            _ => *[0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 10, 118]
                .get(r.random_range(0..12))
                .expect("in range"),
        };
        let title = self.title(&mut r, namespace, wiki);
        let page_id = r.random_range(1..150_000_000i64);
        let domain = if canary { "canary" } else { server };
        let dt = format_rfc3339_ms(dt_ms);
        let timestamp = dt_ms.div_euclid(1000);
        let comment_words = r.random_range(2..30);
        let comment: Vec<&str> = (0..comment_words)
            .map(|_| WORDS[r.random_range(0..WORDS.len())])
            .collect();
        let comment = comment.join(" ");
        let uri_title = title.replace(' ', "_");
        let mut doc = json!({
            "$schema": "/mediawiki/recentchange/1.0.0",
            "meta": {
                "uri": format!("https://{server}/wiki/{uri_title}"),
                "request_id": uuid(&mut r),
                "id": uuid(&mut r),
                "dt": dt,
                "domain": domain,
                "stream": "mediawiki.recentchange",
                "topic": "eqiad.mediawiki.recentchange",
                "partition": 0,
                "offset": 5_600_000_000u64 + i,
            },
            "type": kind,
            "namespace": namespace,
            "title": title,
            "title_url": format!("https://{server}/wiki/{uri_title}"),
            "comment": comment,
            "timestamp": timestamp,
            "user": user,
            "bot": bot,
            "notify_url": format!("https://{server}/w/index.php?diff={}", page_id * 3),
            "server_url": format!("https://{server}"),
            "server_name": server,
            "server_script_path": "/w",
            "wiki": wiki,
            "parsedcomment": format!("<span dir=\"auto\">{comment}</span>"),
        });
        let fields = doc.as_object_mut().expect("an object");
        match kind {
            "edit" | "new" => {
                fields.insert("id".into(), json!(r.random_range(1..2_500_000_000i64)));
                fields.insert("minor".into(), json!(r.random_bool(0.3)));
                fields.insert("patrolled".into(), json!(r.random_bool(0.6)));
                let old = r.random_range(0..60_000i64);
                let new = (old + r.random_range(-2_000..4_000i64)).max(0);
                let old_rev = r.random_range(1..2_300_000_000i64);
                if kind == "edit" {
                    fields.insert("length".into(), json!({"old": old, "new": new}));
                    fields.insert(
                        "revision".into(),
                        json!({"old": old_rev, "new": old_rev + r.random_range(1..5000)}),
                    );
                } else {
                    fields.insert("length".into(), json!({"new": new}));
                    fields.insert("revision".into(), json!({"new": old_rev}));
                }
            }
            "log" => {
                // Log events often lack the top-level id, and `log_params` is an object or an empty array.
                if r.random_bool(0.7) {
                    fields.insert("id".into(), json!(r.random_range(1..2_500_000_000i64)));
                }
                let (log_type, action) = [
                    ("newusers", "create"),
                    ("delete", "delete"),
                    ("move", "move"),
                    ("protect", "protect"),
                    ("upload", "upload"),
                    ("block", "block"),
                ][r.random_range(0..6)];
                fields.insert("log_id".into(), json!(r.random_range(1..200_000_000i64)));
                fields.insert("log_type".into(), json!(log_type));
                fields.insert("log_action".into(), json!(action));
                let params = if r.random_bool(0.5) {
                    json!([])
                } else {
                    json!({"userid": r.random_range(1..50_000_000i64)})
                };
                fields.insert("log_params".into(), params);
                fields.insert(
                    "log_action_comment".into(),
                    json!(format!(
                        "{action}: {}",
                        fields["title"].as_str().unwrap_or("")
                    )),
                );
            }
            _ => {
                fields.insert("id".into(), json!(r.random_range(1..2_500_000_000i64)));
            }
        }
        doc
    }

    fn title(&self, r: &mut ChaCha8Rng, namespace: i64, wiki: &str) -> String {
        if wiki == "wikidatawiki" && namespace == 0 {
            return format!("Q{}", r.random_range(1..130_000_000u64));
        }
        let prefix = match namespace {
            1 => "Talk:",
            2 => "User:",
            3 => "User talk:",
            4 => "Project:",
            6 => "File:",
            10 => "Template:",
            14 => "Category:",
            _ => "",
        };
        let words: Vec<&str> = (0..r.random_range(1..5))
            .map(|_| WORDS[r.random_range(0..WORDS.len())])
            .collect();
        let mut title = words.join(" ");
        if let Some(first) = title.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        if namespace == 6 {
            title.push_str(".jpg");
        }
        format!("{prefix}{title}")
    }
}

fn uuid(r: &mut ChaCha8Rng) -> String {
    let b: [u8; 16] = r.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

/// `2026-01-01T00:00:00.000Z`: Wikimedia's form since 2025 (milliseconds).
pub fn format_rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_random_access() {
        let g = Generator::new(GenConfig::default());
        let a: Vec<_> = (0..50).map(|i| g.event(i)).collect();
        let g2 = Generator::new(GenConfig::default());
        assert_eq!(g2.event(37), a[37]);
        assert_ne!(a[1].data, a[2].data);
        assert_eq!(a[7].offset, 7);
    }

    #[test]
    fn looks_like_the_live_stream() {
        let g = Generator::new(GenConfig::default());
        let docs: Vec<Value> = (0..5000)
            .map(|i| serde_json::from_str(&g.event(i).data).unwrap())
            .collect();
        let share =
            |f: &dyn Fn(&Value) -> bool| docs.iter().filter(|d| f(d)).count() as f64 / 5000.0;
        let bots = share(&|d| d["bot"] == true);
        assert!((0.25..0.45).contains(&bots), "bots {bots}");
        let edits = share(&|d| d["type"] == "edit");
        assert!((0.55..0.70).contains(&edits), "edits {edits}");
        let anon = share(&|d| {
            d["user"]
                .as_str()
                .is_some_and(|u| u.parse::<std::net::IpAddr>().is_ok())
        });
        assert!((0.02..0.08).contains(&anon), "anonymous {anon}");
        let sizes: Vec<usize> = (0..5000).map(|i| g.event(i).data.len()).collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((800..1500).contains(&mean), "mean size {mean}");
        let ids: std::collections::HashSet<_> =
            docs.iter().map(|d| d["meta"]["id"].clone()).collect();
        assert_eq!(
            ids.len(),
            docs.len(),
            "meta.id is unique without duplicate faults"
        );
    }

    #[test]
    fn faults_come_at_their_rates() {
        let g = Generator::new(GenConfig {
            duplicates: 0.05,
            malformed: 0.02,
            late: 0.03,
            future: 0.01,
            canary: 0.01,
            ..GenConfig::default()
        });
        let events: Vec<_> = (0..4000).map(|i| g.event(i)).collect();
        let malformed = events
            .iter()
            .filter(|e| serde_json::from_str::<Value>(&e.data).is_err())
            .count();
        assert!((40..130).contains(&malformed), "malformed {malformed}");
        let ids: Vec<String> = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .map(|d| d["meta"]["id"].to_string())
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        let dups = ids.len() - unique.len();
        assert!((100..320).contains(&dups), "duplicates {dups}");
    }
}
