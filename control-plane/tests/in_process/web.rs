//! The web layer in-process: pages, the API with a token, and bad input.

use crate::util::{self, ControlPlane};

/// The login page renders with the content security policy, and the API answers a
/// token's call while refusing one without credentials.
#[test]
fn login_page_and_an_api_call_with_a_token() {
    util::run(async {
        let cp = ControlPlane::start().await;
        let page = cp
            .http
            .get(format!("{}/login", cp.base))
            .send()
            .await
            .expect("an answer");
        assert_eq!(page.status(), 200);
        assert_eq!(
            page.headers()["content-security-policy"],
            dynserv::web::CONTENT_SECURITY_POLICY
        );
        let html = page.text().await.expect("a body");
        assert!(html.contains("name=\"password\""), "{html}");

        let anonymous = cp
            .http
            .get(format!("{}/api/v1/executions", cp.base))
            .send()
            .await
            .expect("an answer");
        assert_eq!(anonymous.status(), 401);

        let executions = cp.get_json("/api/v1/executions").await;
        assert_eq!(executions, serde_json::json!([]));
        let me = cp.get_json("/api/v1/me").await;
        assert_eq!(me["username"], "admin", "{me}");
        cp.stop().await;
    });
}

/// An unknown filter value, or an unknown filter, is a 400 with a JSON error, never
/// silently ignored.
#[test]
fn bad_filters_are_a_400() {
    util::run(async {
        let cp = ControlPlane::start().await;
        for query in ["status=bogus", "colour=red", "limit=many"] {
            let (status, body) = cp.get(&format!("/api/v1/executions?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert!(error["error"].is_string(), "{query}: {body}");
        }
        cp.stop().await;
    });
}
