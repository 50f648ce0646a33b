//! Testing knobs of `f7tfs serve`: injected faults (5xx, 429 with `Retry-After`, dropped
//! connections) chosen per endpoint, and per-endpoint call and byte counters.
//!
//! Fault syntax (`--fault SPEC`, repeatable; also the strings posted to `/_f7tfs/faults`):
//!
//! ```text
//! SPEC     = ENDPOINTS ":" ACTION "=" PROB [ ":" OPTION ]*
//! ENDPOINTS= "*" | NAME ("," NAME)*      NAME: ops/upload, transfer/mv, s3/part, ops/*, "PUT s3/part"
//! ACTION   = 5xx | 500 | 502 | 503 | 504 | 429 | drop
//! PROB     = a share between 0 and 1 (1 = always)
//! OPTION   = retry-after=SECS (429 only, default 1) | times=N (fire at most N times)
//! ```
//!
//! `*` matches every API and S3 endpoint but not the token endpoint nor `/_f7tfs/*`.
//! `drop` closes the connection without an answer (before the request body is read).
//!
//! Lock order: the plan and the stats each sit behind their own short `parking_lot` mutex; no
//! code path holds both.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What an injected fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultAction {
    /// Answer with this HTTP status (500, 502, 503 or 504) and a JSON error body.
    Status(u16),
    /// Answer with one of 500/502/503/504 picked at random.
    Any5xx,
    /// Answer 429 with `Retry-After: secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// Close the connection without answering.
    Drop,
}

/// One rule of a [`FaultPlan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Endpoint patterns (`*`, `ops/upload`, `ops/*`, `PUT s3/part`).
    pub endpoints: Vec<String>,
    pub action: FaultAction,
    /// Probability in `[0, 1]` that a matching call is hit.
    pub probability: f64,
    /// Fire at most this many times (then the rule is spent).
    pub times: Option<u64>,
    /// How often the rule fired so far.
    #[serde(default)]
    pub fired: u64,
    /// The text the rule was parsed from.
    pub spec: String,
}

/// An ordered list of fault rules; the first rule that matches and fires wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub rules: Vec<FaultRule>,
}

/// A fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    TooManyRequests { retry_after_secs: u64 },
    Drop,
}

impl FaultRule {
    /// Parses one `SPEC` (see the module documentation).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad fault spec {spec:?}: {why}");
        // The endpoint list never contains ':'; everything after the first ':' is
        // ACTION=PROB followed by options.
        let (endpoints, tail) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected ENDPOINTS:ACTION=PROB"))?;
        let mut parts = tail.split(':');
        let action_prob = parts.next().ok_or_else(|| bad("missing ACTION=PROB"))?;
        let (action, prob) = action_prob
            .split_once('=')
            .ok_or_else(|| bad("expected ACTION=PROB"))?;
        let probability: f64 = prob
            .trim()
            .parse()
            .map_err(|_| bad("PROB must be a number between 0 and 1"))?;
        if !(0.0..=1.0).contains(&probability) {
            return Err(bad("PROB must be between 0 and 1"));
        }
        let mut retry_after = 1u64;
        let mut times = None;
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| bad("options are KEY=VALUE"))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad("option value must be an integer"))?;
            match k.trim() {
                "retry-after" => retry_after = n,
                "times" => times = Some(n),
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        let action = match action.trim().to_ascii_lowercase().as_str() {
            "5xx" => FaultAction::Any5xx,
            "429" => FaultAction::TooManyRequests {
                retry_after_secs: retry_after,
            },
            "drop" => FaultAction::Drop,
            code => match code.parse::<u16>() {
                Ok(c) if (500..=599).contains(&c) => FaultAction::Status(c),
                _ => return Err(bad("ACTION must be 5xx, 500..599, 429 or drop")),
            },
        };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(bad("no endpoint given"));
        }
        Ok(Self {
            endpoints,
            action,
            probability,
            times,
            fired: 0,
            spec: spec.to_string(),
        })
    }

    fn matches(&self, method: &str, endpoint: &str) -> bool {
        self.endpoints.iter().any(|p| {
            if p == "*" {
                return endpoint != "auth/token";
            }
            let (pm, pe) = match p.split_once(' ') {
                Some((m, e)) => (Some(m), e),
                None => (None, p.as_str()),
            };
            if pm.is_some_and(|m| !m.eq_ignore_ascii_case(method)) {
                return false;
            }
            match pe.strip_suffix('*') {
                Some(prefix) => endpoint.starts_with(prefix),
                None => pe == endpoint,
            }
        })
    }
}

impl FaultPlan {
    /// Parses a list of specs.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, String> {
        let rules = specs
            .iter()
            .map(|s| FaultRule::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// Decides whether this call gets a fault; `roll` yields uniform numbers in `[0, 1)`.
    pub fn pick(
        &mut self,
        method: &str,
        endpoint: &str,
        mut roll: impl FnMut() -> f64,
    ) -> Option<Fault> {
        for rule in &mut self.rules {
            if !rule.matches(method, endpoint) {
                continue;
            }
            if rule.times.is_some_and(|t| rule.fired >= t) {
                continue;
            }
            if rule.probability < 1.0 && roll() >= rule.probability {
                continue;
            }
            rule.fired += 1;
            return Some(match rule.action {
                FaultAction::Status(c) => Fault::Status(c),
                FaultAction::Any5xx => {
                    let codes = [500, 502, 503, 504];
                    let i = ((roll() * codes.len() as f64) as usize).min(codes.len() - 1);
                    Fault::Status(codes[i])
                }
                FaultAction::TooManyRequests { retry_after_secs } => {
                    Fault::TooManyRequests { retry_after_secs }
                }
                FaultAction::Drop => Fault::Drop,
            });
        }
        None
    }
}

/// Counters of one endpoint (key `"METHOD endpoint"`, e.g. `"GET ops/ls"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Answers by status code (`"200"`, `"404"`, ...); dropped connections count as `"drop"`.
    pub statuses: BTreeMap<String, u64>,
    /// Injected faults.
    pub faults: u64,
}

/// A snapshot of all counters, as `GET /_f7tfs/stats` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub endpoints: BTreeMap<String, EndpointStats>,
}

impl Stats {
    /// Calls of `key` (`"GET ops/ls"`), 0 when never called.
    pub fn calls(&self, key: &str) -> u64 {
        self.endpoints.get(key).map_or(0, |e| e.calls)
    }

    /// Sum of calls over all endpoints.
    pub fn total_calls(&self) -> u64 {
        self.endpoints.values().map(|e| e.calls).sum()
    }

    /// Sum of calls of every key whose endpoint part (after the method) is `endpoint`.
    pub fn calls_any_method(&self, endpoint: &str) -> u64 {
        self.endpoints
            .iter()
            .filter(|(k, _)| k.split_once(' ').is_some_and(|(_, e)| e == endpoint))
            .map(|(_, v)| v.calls)
            .sum()
    }
}

/// Live counters shared by the request middleware.
#[derive(Debug, Default)]
pub(crate) struct StatsRecorder {
    inner: Mutex<Stats>,
}

impl StatsRecorder {
    pub(crate) fn call(&self, key: &str) {
        self.inner
            .lock()
            .endpoints
            .entry(key.to_string())
            .or_default()
            .calls += 1;
    }
    pub(crate) fn bytes_in(&self, key: &str, n: u64) {
        self.inner
            .lock()
            .endpoints
            .entry(key.to_string())
            .or_default()
            .bytes_in += n;
    }
    pub(crate) fn bytes_out(&self, key: &str, n: u64) {
        self.inner
            .lock()
            .endpoints
            .entry(key.to_string())
            .or_default()
            .bytes_out += n;
    }
    pub(crate) fn status(&self, key: &str, status: &str) {
        *self
            .inner
            .lock()
            .endpoints
            .entry(key.to_string())
            .or_default()
            .statuses
            .entry(status.to_string())
            .or_default() += 1;
    }
    pub(crate) fn fault(&self, key: &str) {
        self.inner
            .lock()
            .endpoints
            .entry(key.to_string())
            .or_default()
            .faults += 1;
    }
    pub(crate) fn snapshot(&self) -> Stats {
        self.inner.lock().clone()
    }
    pub(crate) fn reset(&self) {
        *self.inner.lock() = Stats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let r = FaultRule::parse("ops/upload:5xx=0.3").unwrap();
        assert_eq!(r.endpoints, vec!["ops/upload"]);
        assert_eq!(r.action, FaultAction::Any5xx);
        assert!((r.probability - 0.3).abs() < 1e-9);

        let r = FaultRule::parse("*:429=0.2:retry-after=3").unwrap();
        assert_eq!(
            r.action,
            FaultAction::TooManyRequests {
                retry_after_secs: 3
            }
        );

        let r = FaultRule::parse("s3/part,ops/ls:drop=1:times=2").unwrap();
        assert_eq!(r.endpoints, vec!["s3/part", "ops/ls"]);
        assert_eq!(r.action, FaultAction::Drop);
        assert_eq!(r.times, Some(2));

        let r = FaultRule::parse("PUT s3/part:503=1").unwrap();
        assert_eq!(r.action, FaultAction::Status(503));
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "ops/ls",
            "ops/ls:5xx",
            "ops/ls:5xx=2",
            "ops/ls:404=1",
            ":5xx=1",
            "ops/ls:5xx=1:colour=3",
            "ops/ls:5xx=abc",
        ] {
            assert!(FaultRule::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn matching_and_times() {
        let mut plan = FaultPlan::parse(&["ops/*:500=1:times=2", "PUT s3/part:drop=1"]).unwrap();
        let mut roll = || 0.5;
        assert_eq!(
            plan.pick("GET", "ops/ls", &mut roll),
            Some(Fault::Status(500))
        );
        assert_eq!(
            plan.pick("GET", "ops/stat", &mut roll),
            Some(Fault::Status(500))
        );
        assert_eq!(
            plan.pick("GET", "ops/stat", &mut roll),
            None,
            "spent after 2"
        );
        assert_eq!(
            plan.pick("GET", "s3/part", &mut roll),
            None,
            "method must match"
        );
        assert_eq!(plan.pick("PUT", "s3/part", &mut roll), Some(Fault::Drop));
        assert_eq!(plan.pick("POST", "auth/token", &mut roll), None);
    }

    #[test]
    fn probability_is_respected_and_star_skips_token() {
        let mut plan = FaultPlan::parse(&["*:503=0.5"]).unwrap();
        assert_eq!(plan.pick("GET", "ops/ls", || 0.7), None);
        assert_eq!(plan.pick("GET", "ops/ls", || 0.2), Some(Fault::Status(503)));
        assert_eq!(plan.pick("POST", "auth/token", || 0.0), None);
    }
}
