//! `${VAR}` expansion, done on the parsed YAML tree so that an unset variable is reported with
//! the key it was meant for (`apps[0].secret: environment variable WX_SECRET is not set`).

use serde_yaml::Value;

use super::ConfigError;

/// Replace every `${NAME}` in every string of `value`, reading `lookup(NAME)`; every reference
/// that cannot be expanded is added to `errors` (all of them, so one run names them all).
pub fn expand_tree(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(text) => {
            if text.contains("${") {
                match expand_str(text, path, lookup) {
                    Ok(expanded) => *text = expanded,
                    Err(error) => errors.push(error),
                }
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{index}]"), lookup, errors);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                expand_tree(item, &child, lookup, errors);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, lookup, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn expand_str(
    text: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut unset = Vec::new();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::at(path, "unterminated ${ in value"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(ConfigError::at(path, "empty ${} in value"));
        }
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => unset.push(name),
        }
        rest = &after[end + 1..];
    }
    match unset.as_slice() {
        [] => {}
        [name] => {
            return Err(ConfigError::at(
                path,
                format!("environment variable {name} is not set"),
            ));
        }
        names => {
            return Err(ConfigError::at(
                path,
                format!("environment variables {} are not set", names.join(", ")),
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn expands_known_variables_and_names_the_key_of_unknown_ones() {
        let mut tree: Value =
            serde_yaml::from_str("apps:\n  - secret: \"a-${SET}-b\"\n    x: \"${UNSET}\"\n")
                .unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut tree, "", &lookup, &mut errors);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, ["apps[0].x: environment variable UNSET is not set"]);

        let mut tree: Value = serde_yaml::from_str("secret: \"a-${SET}-b\"").unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut tree, "", &lookup, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(tree["secret"].as_str(), Some("a-value-b"));
    }

    #[test]
    fn refuses_unterminated_references() {
        let mut tree: Value = serde_yaml::from_str("k: \"${OPEN\"").unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut tree, "", &lookup, &mut errors);
        assert_eq!(errors.len(), 1);
    }
}
