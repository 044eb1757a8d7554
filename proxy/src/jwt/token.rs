//! Finding the token in a request: the configured sources, in order.

use http::HeaderMap;
use http::header::COOKIE;

use super::config::TokenSource;

/// The first token any source yields. A source that is present but empty
/// (`Authorization: Bearer `) yields nothing and the next is tried.
pub fn find(sources: &[TokenSource], headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    sources.iter().find_map(|source| match source {
        TokenSource::Header { header, prefix } => {
            headers.get_all(header.as_str()).iter().find_map(|v| {
                let v = v.to_str().ok()?.trim();
                let token = match prefix {
                    Some(p) => strip_prefix_ignore_case(v, p.trim_end())?.trim_start(),
                    None => v,
                };
                non_empty(token)
            })
        }
        TokenSource::Cookie { cookie } => headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                if name == cookie {
                    non_empty(value.trim_matches('"'))
                } else {
                    None
                }
            }),
        TokenSource::Query { query: name } => query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            if k == name { non_empty(v) } else { None }
        }),
    })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn non_empty(token: &str) -> Option<String> {
    (!token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<TokenSource> {
        yaml_serde::from_str(
            "- {header: authorization, prefix: 'Bearer '}\n- {header: flyte-authorization, prefix: 'Bearer '}\n- {cookie: tg}\n- {query: access_token}\n",
        )
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn sources_are_tried_in_order() {
        let s = sources();
        assert_eq!(
            find(&s, &headers(&[("authorization", "bearer a.b.c")]), None).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            find(
                &s,
                &headers(&[
                    ("authorization", "Bearer "),
                    ("flyte-authorization", "Bearer f.f.f")
                ]),
                None
            )
            .as_deref(),
            Some("f.f.f")
        );
        assert_eq!(
            find(&s, &headers(&[("cookie", "x=1; tg=c.c.c")]), None).as_deref(),
            Some("c.c.c")
        );
        assert_eq!(
            find(&s, &HeaderMap::new(), Some("a=1&access_token=q.q.q")).as_deref(),
            Some("q.q.q")
        );
        assert_eq!(
            find(&s, &headers(&[("authorization", "Basic xyz")]), None),
            None
        );
        assert_eq!(find(&s, &HeaderMap::new(), None), None);
    }
}
