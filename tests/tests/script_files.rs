//! Scripts with files (issue 14, item 4): a playbook with roles, templates, files and
//! variable files, saved through the API, edited file by file in the pages, uploaded
//! as a `.tar.gz` made by the real `tar` program, validated on save, shipped whole to a
//! real agent and run there; a re-run gets the files of its own run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dynserv_tests::{eventually, Api, ControlPlane, PageClient};
use serde_json::{json, Value};

const PLAYBOOK: &str = "\
- name: site
  hosts: all
  gather_facts: false
  roles:
    - web
  tasks:
    - name: the motd from files/
      copy:
        src: motd.txt
        dest: \"{{ out }}/motd.txt\"
    - name: a task file of the playbook's own
      include_tasks: tasks/extra.yml
";

fn files() -> Value {
    json!([
        {"path": "roles/web/tasks/main.yml", "content":
            "- name: render the site\n  template:\n    src: site.conf.j2\n    dest: \"{{ out }}/site.conf\"\n"},
        {"path": "roles/web/defaults/main.yml", "content": "port: 8080\n"},
        {"path": "roles/web/templates/site.conf.j2", "content": "listen {{ port }}; # {{ inventory_hostname }}\n"},
        {"path": "files/motd.txt", "content": "Welcome\n"},
        {"path": "tasks/extra.yml", "content":
            "- name: a line\n  copy:\n    content: \"extra\\n\"\n    dest: \"{{ out }}/extra.txt\"\n"},
    ])
}

async fn run(api: &Api, script: &str, out: &Path) -> Value {
    let (status, created) = api
        .post(
            "/api/v1/executions",
            &json!({"agent": "localhost", "kind": "playbook", "playbook": script,
                    "vars": {"out": out.to_string_lossy()}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    api.execution_end(&id, Duration::from_secs(60)).await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn a_playbook_with_roles_templates_and_files_runs_whole_on_the_agent() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    api.connected_agent("localhost").await;
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "site", "kind": "playbook", "body": PLAYBOOK,
                    "files": files()}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let id = script["id"].as_str().unwrap().to_string();
    let listed: Vec<&str> = script["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "files/motd.txt",
            "roles/web/defaults/main.yml",
            "roles/web/tasks/main.yml",
            "roles/web/templates/site.conf.j2",
            "tasks/extra.yml"
        ]
    );

    let out = tempfile::tempdir().unwrap();
    let first = run(&api, &id, out.path()).await;
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(
        first["status"],
        "succeeded",
        "{first}\n{}",
        api.log_text(&first_id).await
    );
    assert_eq!(
        read(&out.path().join("site.conf")),
        "listen 8080; # localhost\n"
    );
    assert_eq!(read(&out.path().join("motd.txt")), "Welcome\n");
    assert_eq!(read(&out.path().join("extra.txt")), "extra\n");

    // One file changed through the API: the next run renders it; the files of the
    // first run stay with it, so its re-run renders the old template.
    let mut changed = files();
    changed[1]["content"] = json!("port: 9090\n");
    let (status, saved) = api
        .put(&format!("/api/v1/scripts/{id}"), &json!({"files": changed}))
        .await;
    assert_eq!(status, 200, "{saved}");
    let second = run(&api, &id, out.path()).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(
        read(&out.path().join("site.conf")),
        "listen 9090; # localhost\n"
    );
    let (status, again) = api
        .post(&format!("/api/v1/executions/{first_id}/rerun"), &json!({}))
        .await;
    assert_eq!(status, 201, "{again}");
    let again = api
        .execution_end(again["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(
        read(&out.path().join("site.conf")),
        "listen 8080; # localhost\n"
    );

    // The files come back as they were sent; the archive holds them with the playbook.
    let (status, back) = api.get(&format!("/api/v1/scripts/{id}/files")).await;
    assert_eq!(status, 200);
    assert_eq!(back.as_array().unwrap().len(), 5, "{back}");
    assert!(back.to_string().contains("port: 9090"), "{back}");
    let archive = api
        .http()
        .get(api.url(&format!("/api/v1/scripts/{id}/archive")))
        .bearer_auth(api.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(archive.status(), 200);
    assert_eq!(
        archive.headers()["content-disposition"],
        "attachment; filename=\"site.tar.gz\""
    );
    let bytes = archive.bytes().await.unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    std::fs::write(unpacked.path().join("site.tar.gz"), &bytes).unwrap();
    let tar = Command::new("tar")
        .args(["xzf", "site.tar.gz"])
        .current_dir(unpacked.path())
        .status()
        .unwrap();
    assert!(tar.success());
    assert_eq!(read(&unpacked.path().join("playbook.yml")), PLAYBOOK);
    assert_eq!(
        read(&unpacked.path().join("roles/web/templates/site.conf.j2")),
        "listen {{ port }}; # {{ inventory_hostname }}\n"
    );
}

/// Makes `NAME.tar.gz` of the directory `dir/NAME` with the real tar program, as a
/// user would (`tar czf app.tgz app/`).
fn tar_gz(dir: &Path, name: &str) -> Vec<u8> {
    let archive = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg(name)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(archive).unwrap()
}

fn write(root: &Path, path: &str, content: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

async fn put_archive(api: &Api, id: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = api
        .http()
        .put(api.url(&format!("/api/v1/scripts/{id}/archive")))
        .bearer_auth(api.token().unwrap())
        .header("content-type", "application/gzip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn files_are_checked_on_save_and_archives_replace_the_tree() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let create = |name: &str, files: Value| json!({"name": name, "kind": "playbook", "body": PLAYBOOK, "files": files});
    for (files, expect) in [
        (
            json!([{"path": "../escape.yml", "content": "a: 1\n"}]),
            "../escape.yml",
        ),
        (json!([{"path": "/etc/x", "content": ""}]), "relative"),
        (
            json!([{"path": "playbook.yml", "content": ""}]),
            "the playbook itself",
        ),
        (
            json!([{"path": "roles/web/tasks/main.yml", "content": "- name: x\n  debug: msg=a\n   oops: [\n"}]),
            "roles/web/tasks/main.yml, line",
        ),
        (
            json!([{"path": "roles/web/tasks/main.yml", "content": "- name: x\n  not_a_module_we_know: {}\n"}]),
            "not_a_module_we_know",
        ),
        (
            json!([{"path": "group_vars/all.yml", "content": "- a list\n"}]),
            "mapping",
        ),
        (
            json!([{"path": "templates/x.j2", "content": "{% if %}"}]),
            "templates/x.j2",
        ),
        (
            json!([{"path": "files/big", "content": "x".repeat(1024 * 1024)}]),
            "KiB",
        ),
    ] {
        let (status, body) = api.post("/api/v1/scripts", &create("bad", files)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "files", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(expect),
            "{expect}: {body}"
        );
    }
    let (status, body) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "sh", "kind": "shell", "body": "echo hi", "files": [{"path": "a", "content": "b"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("only a playbook"),
        "{body}"
    );
    // Nothing was stored by the refusals.
    let (_, list) = api.get("/api/v1/scripts?q=bad").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");

    let (status, script) = api.post("/api/v1/scripts", &create("tree", files())).await;
    assert_eq!(status, 201, "{script}");
    let id = script["id"].as_str().unwrap().to_string();

    // An archive made with tar, everything under one directory: the directory goes,
    // site.yml becomes the playbook, the rest replaces the files.
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    write(&app, "site.yml", "- hosts: all\n  roles: [db]\n");
    write(&app, "roles/db/tasks/main.yml", "- debug: msg=db\n");
    write(&app, "group_vars/all.yml", "db_port: 5432\n");
    let (status, replaced) = put_archive(&api, &id, tar_gz(work.path(), "app")).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["body"], "- hosts: all\n  roles: [db]\n");
    let paths: Vec<&str> = replaced["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["group_vars/all.yml", "roles/db/tasks/main.yml"]);

    // An archive with a symlink, or with a file that does not validate, changes nothing.
    let evil = work.path().join("evil");
    write(&evil, "roles/x/tasks/main.yml", "- debug: msg=x\n");
    std::os::unix::fs::symlink("/etc/shadow", evil.join("files")).unwrap();
    let (status, body) = put_archive(&api, &id, tar_gz(work.path(), "evil")).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("only files"),
        "{body}"
    );
    let broken = work.path().join("broken");
    write(&broken, "roles/x/tasks/main.yml", "- name: [unclosed\n");
    write(&broken, "other.txt", "x");
    let (status, body) = put_archive(&api, &id, tar_gz(work.path(), "broken")).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("roles/x/tasks/main.yml"),
        "{body}"
    );
    let (status, body) = put_archive(&api, &id, b"not a tarball".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    let (_, now) = api.get(&format!("/api/v1/scripts/{id}")).await;
    assert_eq!(now["files"], replaced["files"]);
    assert_eq!(now["body"], replaced["body"]);

    // A technician of another project sees neither the files nor the archive.
    let sales = cp.api_as("sales");
    let (status, _) = sales.get(&format!("/api/v1/scripts/{id}/files")).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn files_are_edited_one_by_one_and_uploaded_from_the_pages() {
    let cp = ControlPlane::start_demo().await;
    let api = cp.api_as("admin");
    let (status, script) = api
        .post(
            "/api/v1/scripts",
            &json!({"name": "paged", "kind": "playbook", "body": "- hosts: all\n  tasks: []\n"}),
        )
        .await;
    assert_eq!(status, 201, "{script}");
    let id = script["id"].as_str().unwrap().to_string();
    let mut page = PageClient::signed_in(&cp, "admin", "admin123").await;
    let (status, _, html) = page.get(&format!("/scripts/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("id=\"file-list-empty\""),
        "no empty file list"
    );

    // A new file, then a change that does not validate: the form comes back with the
    // message and what was typed.
    let csrf = page.csrf(&format!("/scripts/{id}/file")).await;
    let (status, location, _) = page
        .post(
            &format!("/scripts/{id}/file"),
            &[
                ("csrf", &csrf),
                ("path", "roles/app/tasks/main.yml"),
                ("content", "- name: hi\r\n  debug:\r\n    msg: hi\r\n"),
            ],
        )
        .await;
    assert_eq!(status, 303, "{location}");
    let (_, _, html) = page.get(&format!("/scripts/{id}")).await;
    assert!(
        html.contains("roles/app/tasks/main.yml"),
        "the file is listed"
    );
    let path = "roles/app/tasks/main.yml";
    // A new file may not take the path of another.
    let (status, _, html) = page
        .post(
            &format!("/scripts/{id}/file"),
            &[
                ("csrf", &csrf),
                ("path", path),
                ("content", "- debug: {}\n"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("exists already"), "{html}");
    let (status, _, html) = page
        .get(&format!(
            "/scripts/{id}/file?path=roles%2Fapp%2Ftasks%2Fmain.yml"
        ))
        .await;
    assert_eq!(status, 200);
    // Handlebars escapes what it shows; a browser shows it as typed.
    assert!(html.contains("    msg: hi"), "{html}");
    let (status, _, html) = page
        .post(
            &format!("/scripts/{id}/file"),
            &[
                ("csrf", &csrf),
                ("path", path),
                ("original", path),
                ("content", "- name: [broken\n"),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("id=\"file-error\""), "{html}");
    assert!(html.contains("[broken"), "what was typed is kept");
    let (_, stored) = api.get(&format!("/api/v1/scripts/{id}/files")).await;
    assert_eq!(
        stored[0]["content"], "- name: hi\n  debug:\n    msg: hi\n",
        "{stored}"
    );

    // Upload from the page's form (multipart, with the CSRF token as a field).
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    write(&tree, "playbook.yml", "- hosts: all\n  roles: [up]\n");
    write(&tree, "roles/up/tasks/main.yml", "- debug: msg=up\n");
    let bytes = tar_gz(work.path(), "tree");
    let boundary = "----dynserv-test-boundary";
    let upload = |csrf: Option<&str>| {
        let mut body = Vec::new();
        if let Some(csrf) = csrf {
            body.extend(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n")
                    .as_bytes(),
            );
        }
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"tree.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend(&bytes);
        body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    };
    let send = |body: Vec<u8>| {
        page.http()
            .post(format!("{}/scripts/{id}/archive", cp.base_url()))
            .header("cookie", page.cookie_header())
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
    };
    let refused = send(upload(None)).await.unwrap();
    assert_eq!(refused.status(), 403, "an upload without the CSRF token");
    let done = send(upload(Some(&csrf))).await.unwrap();
    assert_eq!(done.status(), 303);
    let (_, now) = api.get(&format!("/api/v1/scripts/{id}")).await;
    assert_eq!(now["body"], "- hosts: all\n  roles: [up]\n");
    assert_eq!(now["files"][0]["path"], "roles/up/tasks/main.yml");

    // Delete the last file.
    let (status, _, _) = page
        .post(
            &format!("/scripts/{id}/file"),
            &[
                ("csrf", &csrf),
                ("path", "roles/up/tasks/main.yml"),
                ("original", "roles/up/tasks/main.yml"),
                ("delete", "1"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    eventually(Duration::from_secs(5), "the file is gone", || async {
        let (_, now) = api.get(&format!("/api/v1/scripts/{id}")).await;
        now["files"]
            .as_array()
            .is_none_or(|f| f.is_empty())
            .then_some(())
    })
    .await;
}
