"""Auth routes: register, login, me."""

from __future__ import annotations

from flask import Blueprint, Response

from ..errors import UnauthorizedError
from ..services import users
from .common import auth_required, current_user, db_session, json_body, respond
from .context import current_passwords, current_tokens
from .openapi import doc
from .schemas import LoginIn, RegisterIn, TokenOut, UserOut

bp = Blueprint("auth", __name__, url_prefix="/auth")


@bp.post("/register")
@doc("Create an account", tag="auth", body=RegisterIn, responses={201: UserOut}, errors=(409,))
def register() -> Response:
    data = json_body(RegisterIn)
    user = users.register(
        db_session(), current_passwords(), email=data.email, username=data.username, password=data.password
    )
    return respond(UserOut.model_validate(user), 201)


@bp.post("/login")
@doc(
    "Exchange e-mail and password for an access token",
    tag="auth",
    body=LoginIn,
    responses={200: TokenOut},
    errors=(401,),
)
def login() -> Response:
    data = json_body(LoginIn)
    user = users.authenticate(db_session(), current_passwords(), email=data.email, password=data.password)
    if user is None:
        # One answer for unknown e-mail, wrong password and inactive user: no account oracle.
        raise UnauthorizedError("Incorrect email or password")
    issued = current_tokens().issue(user.id)
    return respond(TokenOut(access_token=issued.access_token, expires_in=issued.expires_in))


@bp.get("/me")
@doc("The authenticated user", tag="auth", responses={200: UserOut})
@auth_required
def me() -> Response:
    return respond(UserOut.model_validate(current_user()))
