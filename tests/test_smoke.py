"""The shortest path a new user takes: register, log in, call /auth/me."""

from flask.testing import FlaskClient

from tests.harness.users import Users


def test_register_login_me(client: FlaskClient, users: Users) -> None:
    user = users.create(email="Ann@Example.com", username="ann")
    assert user["email"] == "ann@example.com"
    assert user["created_at"].endswith("Z")
    r = client.get("/auth/me", headers=user["headers"])
    assert r.status_code == 200
    assert r.get_json()["username"] == "ann"
    assert "password_hash" not in r.get_json()
