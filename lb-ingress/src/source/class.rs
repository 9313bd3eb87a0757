//! Which Ingresses are ours: IngressClass selection.
use std::collections::HashSet;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Annotation that marks the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation that predates `spec.ingressClassName` (still honoured by
/// ingress-nginx and others when the field is unset).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The controller value lb-ingress answers to by default (deploy/ingressclass.yaml).
pub const CONTROLLER: &str = "lb.dev/ingress";

/// Who this controller is: the IngressClass name it serves (`--ingress-class`) and the
/// `spec.controller` value it implements (`--controller-name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassId {
    pub name: String,
    pub controller: String,
}

/// The IngressClasses that are ours, among those of the cluster: the one named as
/// `--ingress-class` says and every one whose `spec.controller` is ours (as the
/// IngressClass API means it: the class names the controller that implements it).
#[derive(Debug)]
pub struct Ours {
    names: HashSet<String>,
    /// One of them carries `ingressclass.kubernetes.io/is-default-class: "true"`.
    default: bool,
}

impl Ours {
    pub fn new<'a>(classes: impl IntoIterator<Item = &'a IngressClass>, id: &ClassId) -> Ours {
        let mut names = HashSet::from([id.name.clone()]);
        let mut default = false;
        for c in classes {
            let Some(name) = c.metadata.name.as_deref() else {
                continue;
            };
            let controller = c.spec.as_ref().and_then(|s| s.controller.as_deref());
            if name != id.name && controller != Some(id.controller.as_str()) {
                continue;
            }
            names.insert(name.to_owned());
            default |= (c.metadata.annotations.as_ref())
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
        }
        Ours { names, default }
    }

    /// Does this Ingress belong to us? Its `spec.ingressClassName` names one of our
    /// classes; when the field is unset, its legacy annotation does; when neither is set,
    /// one of our classes is the cluster's default.
    pub fn selects(&self, ingress: &Ingress) -> bool {
        if let Some(name) = (ingress.spec.as_ref()).and_then(|s| s.ingress_class_name.as_deref()) {
            return self.names.contains(name);
        }
        if let Some(name) =
            (ingress.metadata.annotations.as_ref()).and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
        {
            return self.names.contains(name.as_str());
        }
        self.default
    }
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

    fn class(name: &str, controller: &str, default: Option<&str>) -> IngressClass {
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default
                    .map(|d| [(DEFAULT_CLASS_ANNOTATION.to_owned(), d.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::networking::v1::IngressClassSpec {
                controller: Some(controller.into()),
                ..Default::default()
            }),
        }
    }

    fn id() -> ClassId {
        ClassId {
            name: "lb".into(),
            controller: CONTROLLER.into(),
        }
    }

    #[test]
    fn class_name_annotation_and_default() {
        let ours = |default| Ours::new(&[class("lb", "other/x", default)], &id());
        let (plain, default) = (ours(None), ours(Some("true")));
        assert!(plain.selects(&ingress(Some("lb"), None)));
        assert!(!default.selects(&ingress(Some("nginx"), None)));
        // The field wins over the annotation.
        assert!(!plain.selects(&ingress(Some("nginx"), Some("lb"))));
        assert!(plain.selects(&ingress(None, Some("lb"))));
        assert!(!default.selects(&ingress(None, Some("nginx"))));
        assert!(!plain.selects(&ingress(None, None)));
        assert!(default.selects(&ingress(None, None)));
        // Our name is ours even before its IngressClass exists.
        assert!(Ours::new([], &id()).selects(&ingress(Some("lb"), None)));
    }

    #[test]
    fn classes_of_our_controller_are_ours() {
        let classes = [
            class("internal", CONTROLLER, None),
            class("public", CONTROLLER, Some("true")),
            class("nginx", "k8s.io/ingress-nginx", Some("false")),
        ];
        let ours = Ours::new(&classes, &id());
        for name in ["lb", "internal", "public"] {
            assert!(ours.selects(&ingress(Some(name), None)), "{name}");
            assert!(ours.selects(&ingress(None, Some(name))), "{name}");
        }
        assert!(!ours.selects(&ingress(Some("nginx"), None)));
        // A class of ours marked default takes Ingresses without a class.
        assert!(ours.selects(&ingress(None, None)));
    }

    #[test]
    fn only_our_classes_marked_true_make_us_default() {
        let default =
            |classes: &[IngressClass]| Ours::new(classes, &id()).selects(&ingress(None, None));
        assert!(default(&[class("lb", "other/x", Some("true"))]));
        assert!(!default(&[class("lb", CONTROLLER, Some("false"))]));
        assert!(!default(&[class(
            "nginx",
            "k8s.io/ingress-nginx",
            Some("true")
        )]));
        assert!(default(&[class("mine", CONTROLLER, Some("true"))]));
        assert!(!default(&[class("lb", CONTROLLER, None)]));
    }
}
