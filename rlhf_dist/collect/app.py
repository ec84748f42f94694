"""The labelling web app (Starlette, pages rendered on the server by Jinja2 with autoescaping on).

Every route but /login needs an annotator's token (a cookie set by their /login link, or an
`Authorization: Bearer` header for scripted clients); every write carries a CSRF token made from the store's
secret and the annotator's name. Model output is untrusted text: it is only ever rendered escaped, and a
response longer than `max_shown_chars` is cut for display (the export keeps it whole).
"""
from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from rlhf_dist.collect.guard import Guard
from rlhf_dist.collect.outcomes import LETTERS, agreement, ranks_from_choice
from rlhf_dist.collect.store import Store, VoteRefused
from rlhf_dist.config.collect import ServeConfig

COOKIE = "collect_token"
HERE = resources.files("rlhf_dist.collect")
ASSETS = {"style.css": "text/css; charset=utf-8", "keys.js": "text/javascript; charset=utf-8"}  # nothing else is served


def clipped(text: str, limit: int) -> dict:
    return {"text": text[:limit], "length": len(text), "cut": len(text) > limit}


class CollectApp:
    def __init__(self, cfg: ServeConfig, store: Store):
        self.cfg, self.store = cfg, store
        self.secret = store.secret()
        self.pages = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=True, undefined=StrictUndefined)
        self.assets = {name: (HERE / "assets" / name).read_bytes() for name in ASSETS}
        routes = [Route("/login", self.login), Route("/", self.label), Route("/vote", self.vote, methods=["POST"]),
                  Route("/progress", self.progress), Route("/agreement", self.agreement),
                  Route("/static/{name}", self.asset)]
        self.starlette = Starlette(routes=routes)
        self.asgi = Guard(self.starlette, cfg.max_body_bytes, cfg.loopback)

    # --- helpers ---

    def page(self, name: str, status: int = 200, **values) -> HTMLResponse:
        return HTMLResponse(self.pages.get_template(name).render(**values), status_code=status)

    def error(self, status: int, message: str, who: str | None = None) -> HTMLResponse:
        return self.page("error.html", status, who=who, message=message)

    def csrf(self, who: str) -> str:
        return hmac.new(self.secret, b"csrf:" + who.encode(), hashlib.sha256).hexdigest()

    async def who(self, request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        return await run_in_threadpool(self.store.who, token)

    def unauthorized(self) -> HTMLResponse:
        return self.error(401, "This page needs your annotator link (/login?token=...), printed when the server started.")

    # --- routes ---

    async def login(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        who = await run_in_threadpool(self.store.who, token)
        if who is None:
            return self.error(403, "Unknown token: ask for your annotator link again.")
        out = RedirectResponse("/", status_code=303)
        out.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return out

    async def label(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return self.unauthorized()
        saved = request.query_params.get("saved")
        if saved is not None and not await run_in_threadpool(self.store.has_vote, who, saved):
            saved = None  # only a vote the store holds is ever called saved
        nxt = await run_in_threadpool(self.store.next_item, who, self.cfg.overlap)
        (mine,) = await run_in_threadpool(self.store.progress, self.cfg.overlap, who)
        if nxt is None:
            return self.page("done.html", who=who, saved=saved, mine=mine)
        item, shown = nxt
        limit = self.cfg.max_shown_chars
        responses = [{"letter": LETTERS[p], "key": LETTERS[p].lower(), **clipped(item.responses[c], limit)}
                     for p, c in enumerate(shown)]
        return self.page("item.html", who=who, saved=saved, mine=mine, item=item, prompt=clipped(item.prompt, limit),
                         responses=responses, shown=",".join(map(str, shown)), csrf=self.csrf(who),
                         max_rationale=self.cfg.max_rationale_chars)

    async def vote(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return self.unauthorized()
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return self.error(403, "This form came from another site; nothing was saved.", who)
        try:
            form = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                            max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            return self.error(400, "The form could not be read; nothing was saved.", who)
        field = lambda name: (form.get(name) or [""])[0]  # noqa: E731
        if not hmac.compare_digest(field("csrf").encode(), self.csrf(who).encode()):
            return self.error(403, "The form's CSRF token is missing or wrong; reload the page. Nothing was saved.", who)
        rationale = field("rationale").strip()
        if len(rationale) > self.cfg.max_rationale_chars:
            return self.error(400, f"The rationale is over {self.cfg.max_rationale_chars} characters; nothing was saved.", who)
        try:
            shown = [int(x) for x in field("shown").split(",")]
            form_ranks = None
            if field("choice") == "rank":
                form_ranks = [int(field(f"rank_{p}")) for p in range(len(shown))]
            kind, ranks = ranks_from_choice(field("choice"), shown, form_ranks)
        except ValueError as e:
            message = str(e) if "choice" in str(e) or "ranks" in str(e) else "give every response a rank (1 is best)"
            return self.error(400, f"The vote could not be read: {message}. Nothing was saved.", who)
        item_id = field("item")
        try:
            await run_in_threadpool(self.store.record, who, item_id, shown, kind, ranks, rationale)
        except VoteRefused as e:
            return self.error(409, f"{e}. Nothing was saved.", who)
        # Committed (and synced) above: only now does the next page say "saved".
        return RedirectResponse(f"/?saved={quote(item_id)}", status_code=303)

    async def progress(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return self.unauthorized()
        rows = await run_in_threadpool(self.store.progress, self.cfg.overlap)
        total = await run_in_threadpool(self.store.count_items)
        return self.page("progress.html", who=who, rows=rows, total=total, overlap=self.cfg.overlap)

    async def agreement(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return self.unauthorized()
        result = agreement(await run_in_threadpool(self.store.votes))
        return self.page("agreement.html", who=who, result=result, overlap=self.cfg.overlap)

    async def asset(self, request: Request) -> Response:
        if await self.who(request) is None:
            return self.unauthorized()
        name = request.path_params["name"]
        if name not in ASSETS:
            return self.error(404, "Not found.")
        return Response(self.assets[name], media_type=ASSETS[name])
