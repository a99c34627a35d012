//! The `testing` layer against the shipped components: the same answers inside
//! the sandbox as the native harness gives.

use weir_sdk::Status;
use weir_sdk::testing::Component;

#[test]
fn the_scenario_component_answers_like_its_native_logic() {
    let component = Component::load(weir_artifacts::PLUGIN_SCENARIO).expect("load");
    assert_eq!(component.name(), "scenario");
    let config = r#"{"scenario_id": 5, "log_format": {"age": 1, "gender": 1},
        "filters": [{"left": "age", "operator": ">", "right": 20},
                    {"left": "gender", "operator": "==", "right": "MALE"}]}"#;
    let mut instance = component.configure(config).expect("configure");
    let results = instance
        .run_lines("{\"age\":31,\"gender\":\"MALE\"}\n{\"age\":12,\"gender\":\"MALE\"}\nnot json\n")
        .expect("run");
    assert_eq!(results.len(), 3);
    assert!(results[0].matched && results[0].status == Status::Emitted);
    assert_eq!(results[0].json(0)["success"], 1);
    assert!(!results[1].matched && results[1].status == Status::Emitted);
    assert_eq!(results[1].json(0)["success"], 0);
    assert_eq!(results[2].status, Status::Failed);
    assert!(
        results[2].error.as_deref().unwrap().contains("JSON"),
        "{:?}",
        results[2].error
    );

    let refused =
        component.configure(r#"{"filters": [{"left": "a", "operator": "=~", "right": 1}]}"#);
    assert!(refused.unwrap_err().contains("operator"));
}

#[test]
fn a_component_the_service_would_refuse_is_refused_here_too() {
    let err = Component::load(weir_artifacts::FIXTURE_FORBIDDEN_IMPORT).unwrap_err();
    assert!(
        err.contains("wasi:sockets") || err.contains("wasi:filesystem"),
        "{err}"
    );
    let err = Component::load(weir_artifacts::FIXTURE_CORE_MODULE).unwrap_err();
    assert!(err.contains("component"), "{err}");
}

#[test]
fn a_trap_fails_only_its_event() {
    let component = Component::load(weir_artifacts::FIXTURE_TRAP_AT).expect("load");
    let mut instance = component.configure("{}").expect("configure");
    let results = instance
        .run_lines("{\"n\":1}\n{\"trap\":true}\n{\"n\":3}\n")
        .expect("run");
    let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses[1], Status::Failed);
    assert!(
        results[1].error.as_deref().unwrap().starts_with("trap"),
        "{:?}",
        results[1].error
    );
    assert!(
        statuses[0] != Status::Failed && statuses[2] != Status::Failed,
        "{statuses:?}"
    );
}
