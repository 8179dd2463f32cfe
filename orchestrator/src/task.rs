//! How a dataset row becomes a runnable task: its image name and its environment activation.

use swe_env_grading::dataset::Instance;

/// Image name template of the official SWE-bench instance images. `{id}` is the instance id with `__` replaced by
/// `_1776_` (the official convention), `{id_raw}` the id as is.
pub const OFFICIAL_IMAGE_TEMPLATE: &str = "swebench/sweb.eval.x86_64.{id}:latest";

/// Activation line of official images.
pub const CONDA_ACTIVATE: &str = "source /opt/miniconda3/bin/activate && conda activate testbed";

/// The image for `instance`: its own `image` field, else `template` filled in.
pub fn image_for(instance: &Instance, template: &str) -> String {
    if let Some(image) = instance.image.as_deref().filter(|i| !i.is_empty()) {
        return image.to_owned();
    }
    let id = instance.instance_id.to_lowercase().replace("__", "_1776_");
    template
        .replace("{id}", &id)
        .replace("{id_raw}", &instance.instance_id)
}

/// The shell line(s) that activate the task's environment.
pub fn activation_for(instance: &Instance) -> String {
    instance
        .activate
        .clone()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| CONDA_ACTIVATE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_image_names_follow_the_1776_convention() {
        let value = serde_json::json!({
            "repo": "django/django", "instance_id": "django__django-11099", "base_commit": "abc",
            "patch": "", "test_patch": "diff --git a/t.py b/t.py\n", "problem_statement": "p", "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]"
        });
        let instance: Instance = serde_json::from_value(value).unwrap();
        assert_eq!(
            image_for(&instance, OFFICIAL_IMAGE_TEMPLATE),
            "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
        );
        assert_eq!(activation_for(&instance), CONDA_ACTIVATE);
    }
}
