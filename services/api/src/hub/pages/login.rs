//! Signing in and out of the Hub: the login form, the session it opens, and the sign-out.

use super::*;

fn login_page(next: &str, error: Option<&str>, token: &str) -> Response {
    let body = html! {
        section.signin {
            h1 { "Sign in to the Pulse Hub" }
            p { "Use an API key of your workspace. You will see and control that workspace's sequences only." }
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form method="post" action="/hub/login" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.muted { "Running locally with " code { "make run" } "? The key is " code { "pulse-dev-key" } "." }
        }
    };
    let mut resp =
        axum::response::Html(layout("Sign in", None, None, body).into_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::LOGIN_COOKIE, token, 1800)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn login_form(Query(q): Query<Next>) -> Response {
    login_page(
        &safe_next(q.next.as_deref()),
        None,
        &session::random_token(),
    )
}

/// Signs in: the form's token must match the sign-in cookie (double submit), the key a workspace.
pub async fn login(
    State(state): State<HubState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let next = safe_next(form.get("next"));
    let cookie = session::cookie(&headers, session::LOGIN_COOKIE);
    let matches = matches!((form.get("csrf"), cookie.as_deref()), (Some(a), Some(b)) if session::same_secret(a, b));
    if !matches {
        let mut resp = login_page(
            &next,
            Some("The sign-in form expired; please try again."),
            &session::random_token(),
        );
        *resp.status_mut() = axum::http::StatusCode::FORBIDDEN;
        return resp;
    }
    let Some(key) = form.get("api_key") else {
        let mut resp = login_page(&next, Some("Enter an API key."), &session::random_token());
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
        return resp;
    };
    match session::sign_in(&state.api.db, key).await {
        Ok(Some(token)) => {
            tracing::info!("hub sign-in");
            let mut resp = Redirect::to(&next).into_response();
            let cookies = [
                session::set_cookie(session::COOKIE, &token, session::SESSION_HOURS * 3600),
                session::set_cookie(session::LOGIN_COOKIE, "", 0),
            ];
            for c in cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Ok(None) => {
            let mut resp = login_page(
                &next,
                Some("That API key is not valid."),
                &session::random_token(),
            );
            *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            resp
        }
        Err(e) => e.into_response(),
    }
}

pub async fn logout(State(state): State<HubState>, posted: Posted) -> Response {
    if let Err(e) = session::sign_out(&state.api.db, &posted.user.token).await {
        return e.into_response();
    }
    let mut resp = Redirect::to("/hub/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_and_return_paths_stay_in_the_hub() {
        assert_eq!(safe_next(Some("/hub/sends?x=1")), "/hub/sends?x=1");
        assert_eq!(safe_next(Some("https://evil.example/")), "/hub/sequences");
        assert_eq!(safe_next(Some("/hub//evil.example")), "/hub/sequences");
        assert_eq!(safe_next(None), "/hub/sequences");
    }
}
