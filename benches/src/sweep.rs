//! The points of a sweep as given on a command line: `--sweep 1,10,50,100`.

/// A comma-separated list of numbers; empty: none (the sweep is skipped).
pub fn points<T: std::str::FromStr>(text: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    text.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|e| anyhow::anyhow!("{v:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::points;

    #[test]
    fn parses_a_list_and_an_empty_one() {
        assert_eq!(points::<usize>("1, 10,50,").unwrap(), vec![1, 10, 50]);
        assert!(points::<usize>("").unwrap().is_empty());
        let err = points::<usize>("1,x").unwrap_err().to_string();
        assert!(err.contains("\"x\""), "{err}");
    }
}
