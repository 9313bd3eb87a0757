//! Which Ingresses are ours: IngressClass selection.
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Annotation that marks the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation that predates `spec.ingressClassName` (still honoured by
/// ingress-nginx and others when the field is unset).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// True when the IngressClass named `class` carries the default-class annotation.
pub fn class_is_default<'a>(
    classes: impl IntoIterator<Item = &'a IngressClass>,
    class: &str,
) -> bool {
    classes.into_iter().any(|c| {
        c.metadata.name.as_deref() == Some(class)
            && c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
    })
}

/// Does this Ingress belong to `class`? Its `spec.ingressClassName`, else its legacy
/// annotation, else (no class at all) only when `class` is the default class.
pub fn selects(ingress: &Ingress, class: &str, class_is_default: bool) -> bool {
    if let Some(name) = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        return name == class;
    }
    if let Some(name) = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
    {
        return name == class;
    }
    class_is_default
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::IngressSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ingress(class: Option<&str>, legacy: Option<&str>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                annotations: legacy
                    .map(|l| [(LEGACY_CLASS_ANNOTATION.to_owned(), l.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class.map(Into::into),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        }
    }

    fn class(name: &str, default: Option<&str>) -> IngressClass {
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default
                    .map(|d| [(DEFAULT_CLASS_ANNOTATION.to_owned(), d.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..IngressClass::default()
        }
    }

    #[test]
    fn class_name_annotation_and_default() {
        assert!(selects(&ingress(Some("lb"), None), "lb", false));
        assert!(!selects(&ingress(Some("nginx"), None), "lb", true));
        // The field wins over the annotation.
        assert!(!selects(&ingress(Some("nginx"), Some("lb")), "lb", false));
        assert!(selects(&ingress(None, Some("lb")), "lb", false));
        assert!(!selects(&ingress(None, Some("nginx")), "lb", true));
        assert!(!selects(&ingress(None, None), "lb", false));
        assert!(selects(&ingress(None, None), "lb", true));
    }

    #[test]
    fn only_our_class_marked_true_makes_us_default() {
        assert!(class_is_default(&[class("lb", Some("true"))], "lb"));
        assert!(!class_is_default(&[class("lb", Some("false"))], "lb"));
        assert!(!class_is_default(&[class("nginx", Some("true"))], "lb"));
        assert!(!class_is_default(&[class("lb", None)], "lb"));
    }
}
