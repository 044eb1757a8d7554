//! Team labels: stamp the namespace's team on the object and its pod
//! template; refuse an object labelled for another team.

use std::collections::BTreeMap;

/// Why an object may not be admitted as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

/// Sets `key=team` in `labels` unless it is there already. A different
/// value is another team's label: denied unless `admin` (the requester is
/// in an admin group), in which case it is left alone. `what` names the
/// labels' owner for the message.
pub fn stamp(
    labels: &mut Option<BTreeMap<String, String>>,
    key: &str,
    team: &str,
    admin: bool,
    what: &str,
) -> Result<(), Denial> {
    let labels = labels.get_or_insert_with(BTreeMap::new);
    match labels.get(key) {
        Some(existing) if existing == team => Ok(()),
        Some(existing) if admin => {
            tracing::debug!(%existing, %team, "admin kept another team's label");
            Ok(())
        }
        Some(existing) => Err(Denial(format!(
            "{what} carries the label {key}={existing}, but its namespace belongs to team {team:?}: \
             objects are billed to the team that owns their namespace (remove the label, or ask a \
             platform admin)"
        ))),
        None => {
            labels.insert(key.to_owned(), team.to_owned());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_a_missing_label_and_keeps_a_matching_one() {
        let mut labels = None;
        stamp(&mut labels, "team", "ml", false, "Pod \"p\"").unwrap();
        assert_eq!(labels.as_ref().unwrap()["team"], "ml");
        stamp(&mut labels, "team", "ml", false, "Pod \"p\"").unwrap();
        assert_eq!(labels.unwrap().len(), 1);
    }

    #[test]
    fn another_teams_label_is_denied_unless_admin() {
        let mut labels = Some(BTreeMap::from([("team".to_owned(), "data".to_owned())]));
        let denial = stamp(&mut labels, "team", "ml", false, "Deployment \"d\"").unwrap_err();
        assert_eq!(
            denial.0,
            "Deployment \"d\" carries the label team=data, but its namespace belongs to team \"ml\": objects are billed to the team that owns their namespace (remove the label, or ask a platform admin)"
        );
        stamp(&mut labels, "team", "ml", true, "Deployment \"d\"").unwrap();
        assert_eq!(labels.unwrap()["team"], "data");
    }
}
