//! The query string of `GET /v1/requests`: `limit` (1..=1000, default 100), `after` (a
//! request id: the page holds the ids above it), `state` and `updated_since` (RFC 3339).
//! A pure parser, so that every refusal is unit-tested; each names its parameter, and all
//! of them are reported at once. Unknown and repeated parameters are refused too: a typo
//! (`limt=10`) silently ignored would page differently from what its caller meant.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{Failure, ListQuery, Reason};
use crate::store::{PageQuery, State};

/// Records per page unless `limit` says otherwise (the contract's, [`ListQuery`]).
const DEFAULT_LIMIT: usize = ListQuery::DEFAULT_LIMIT as usize;
/// The largest `limit`: a page is built in memory, so it is bounded.
const MAX_LIMIT: usize = ListQuery::MAX_LIMIT as usize;

const PARAMETERS: [&str; 4] = ["limit", "after", "state", "updated_since"];

fn invalid(parameter: &str, message: String, value: &str) -> Failure {
    Failure::new(Reason::QueryInvalid, format!("{parameter}: {message}"))
        .value(value.chars().take(40).collect::<String>())
}

/// The page a query string asks for, or every problem found in it.
pub fn parse_list_query(raw: Option<&str>) -> Result<PageQuery, Vec<Failure>> {
    let mut query = PageQuery {
        after: 0,
        limit: DEFAULT_LIMIT,
        state: None,
        updated_since: None,
    };
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(raw.unwrap_or("")) {
        Ok(pairs) => pairs,
        Err(_) => {
            return Err(vec![Failure::new(
                Reason::QueryInvalid,
                "the query string is not valid URL encoding",
            )])
        }
    };
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for (name, value) in &pairs {
        if !PARAMETERS.contains(&name.as_str()) {
            failures.push(invalid(
                name,
                format!("unknown parameter; known: {}", PARAMETERS.join(", ")),
                value,
            ));
            continue;
        }
        if seen.contains(name) {
            failures.push(invalid(name, "given more than once".into(), value));
            continue;
        }
        seen.push(name.clone());
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n)
                    if (1..=MAX_LIMIT).contains(&n)
                        && value.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    query.limit = n
                }
                _ => failures.push(invalid(
                    name,
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                    value,
                )),
            },
            // The one id parser the routes use (path ids), so that both agree.
            // 0 is the start (before the first id), as the spec says: a client may begin
            // its loop with `after=0`.
            "after" if value == "0" => query.after = 0,
            "after" => match super::parse_id(value) {
                Ok(id) => query.after = id,
                Err(_) => failures.push(invalid(
                    name,
                    "must be a request id (a positive integer), or 0 for the start".into(),
                    value,
                )),
            },
            "state" => match State::parse(value) {
                Some(s) => query.state = Some(s),
                None => failures.push(
                    invalid(name, format!("unknown state \"{value}\""), value)
                        .expected(State::ALL.iter().map(|s| s.as_str().to_string()).collect()),
                ),
            },
            _ => match parse_time(value) {
                Some(t) => query.updated_since = Some(t),
                None => failures.push(invalid(
                    name,
                    "must be an RFC 3339 time such as 2026-12-01T00:00:00Z".into(),
                    value,
                )),
            },
        }
    }
    if failures.is_empty() {
        Ok(query)
    } else {
        Err(failures)
    }
}

/// RFC 3339; an offset's `+` left unencoded in the URL arrives as a space, and RFC 3339
/// times hold no spaces, so that reading is tried too (as for request keys).
fn parse_time(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&value.replace(' ', "+"), &Rfc3339))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> Vec<(String, String)> {
        parse_list_query(Some(raw))
            .unwrap_err()
            .into_iter()
            .map(|f| (f.reason.as_str().to_string(), f.message))
            .collect()
    }

    #[test]
    fn defaults_and_values() {
        let q = parse_list_query(None).unwrap();
        assert_eq!(
            (q.after, q.limit, q.state, q.updated_since),
            (0, 100, None, None)
        );
        let q = parse_list_query(Some(
            "limit=1000&after=42&state=draft&updated_since=2026-12-01T10:00:00%2B01:00",
        ))
        .unwrap();
        assert_eq!((q.after, q.limit, q.state), (42, 1000, Some(State::Draft)));
        let t = OffsetDateTime::parse("2026-12-01T09:00:00Z", &Rfc3339).unwrap();
        assert_eq!(q.updated_since, Some(t));
        // The offset's `+` sent unencoded (a space once decoded).
        let q = parse_list_query(Some("updated_since=2026-12-01T10:00:00+01:00")).unwrap();
        assert_eq!(q.updated_since, Some(t));
        assert_eq!(parse_list_query(Some("")).unwrap().limit, 100);
    }

    #[test]
    fn each_bad_parameter_is_named() {
        let limit = "limit: must be an integer from 1 to 1000";
        for raw in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=+5",
            "limit=",
            "limit=ten",
        ] {
            assert_eq!(
                refused(raw),
                [("QUERY:INVALID".into(), limit.into())],
                "{raw}"
            );
        }
        let after = "after: must be a request id (a positive integer), or 0 for the start";
        assert_eq!(
            parse_list_query(Some("after=0")).map(|q| q.after).ok(),
            Some(0)
        );
        for raw in [
            "after=00",
            "after=+5",
            "after=07",
            "after=x",
            "after=18446744073709551616",
        ] {
            assert_eq!(
                refused(raw),
                [("QUERY:INVALID".into(), after.into())],
                "{raw}"
            );
        }
        assert_eq!(
            refused("state=open"),
            [(
                "QUERY:INVALID".into(),
                "state: unknown state \"open\"".into()
            )]
        );
        let failures = parse_list_query(Some("state=open")).unwrap_err();
        assert_eq!(failures[0].expected.as_ref().map(Vec::len), Some(6));
        assert_eq!(
            refused("updated_since=yesterday"),
            [(
                "QUERY:INVALID".into(),
                "updated_since: must be an RFC 3339 time such as 2026-12-01T00:00:00Z".into()
            )]
        );
        assert_eq!(
            refused("limt=5&limit=5&limit=6"),
            [
                (
                    "QUERY:INVALID".into(),
                    "limt: unknown parameter; known: limit, after, state, updated_since".into()
                ),
                ("QUERY:INVALID".into(), "limit: given more than once".into()),
            ]
        );
    }
}
