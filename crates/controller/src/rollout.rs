//! Rollout arithmetic of the control-plane planner (pure).

use api::controlplane::v1alpha3::RolloutStrategy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::SpecError;

/// The effective (maxSurge, maxUnavailable) for `replicas`, applying the defaults documented on
/// `RollingUpdate`: maxSurge 1; maxUnavailable 0 unless maxSurge is 0, then 1. Percentages round
/// up for surge and down for unavailability, as Deployments do. A value the schema should have
/// refused is an error, never a silent 0.
pub fn bounds(strategy: Option<&RolloutStrategy>, replicas: i32) -> Result<(i32, i32), SpecError> {
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let resolve = |field: &str,
                   v: Option<&IntOrString>,
                   round_up: bool|
     -> Result<Option<i32>, SpecError> {
        let Some(v) = v else { return Ok(None) };
        let n = match v {
            IntOrString::Int(n) if *n >= 0 => *n,
            IntOrString::String(s) => {
                let pct: i64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (0..=100).contains(p))
                    .ok_or_else(|| SpecError::Invalid(format!(
                        "{field} {s:?} must be a non-negative integer or a percentage from 0% to 100%"
                    )))?;
                let scaled = pct * i64::from(replicas.max(0));
                let n = if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                i32::try_from(n).unwrap_or(i32::MAX)
            }
            IntOrString::Int(n) => {
                return Err(SpecError::Invalid(format!(
                    "{field} {n} must not be negative"
                )));
            }
        };
        Ok(Some(n))
    };
    let surge = resolve("maxSurge", rolling.and_then(|r| r.max_surge.as_ref()), true)?.unwrap_or(1);
    let unavailable = resolve(
        "maxUnavailable",
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        false,
    )?
    .unwrap_or(if surge > 0 { 0 } else { 1 });
    Ok((surge, unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::controlplane::v1alpha3::RollingUpdate;

    fn strategy(surge: Option<IntOrString>, unavailable: Option<IntOrString>) -> RolloutStrategy {
        RolloutStrategy {
            r#type: None,
            rolling_update: Some(RollingUpdate {
                max_surge: surge,
                max_unavailable: unavailable,
            }),
        }
    }

    #[test]
    fn defaults_match_cacppt() {
        assert_eq!(bounds(None, 3).ok(), Some((1, 0)));
        let delete_first = strategy(Some(IntOrString::Int(0)), None);
        assert_eq!(bounds(Some(&delete_first), 3).ok(), Some((0, 1)));
    }

    #[test]
    fn percentages_round_like_deployments() {
        let s = strategy(
            Some(IntOrString::String("34%".into())),
            Some(IntOrString::String("34%".into())),
        );
        assert_eq!(bounds(Some(&s), 3).ok(), Some((2, 1)));
        assert_eq!(bounds(Some(&s), 5).ok(), Some((2, 1)));
    }

    #[test]
    fn bad_values_are_errors_not_zero() {
        for bad in [
            IntOrString::String("lots".into()),
            IntOrString::String("150%".into()),
            IntOrString::Int(-1),
        ] {
            let s = strategy(Some(bad.clone()), None);
            assert!(bounds(Some(&s), 3).is_err(), "{bad:?}");
        }
    }
}
