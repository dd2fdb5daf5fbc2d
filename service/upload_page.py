"""The upload page at ``/ui``: plain HTML, CSS and JS from ``service/ui``, no build step.

The three files are read once at import and served from memory under fixed names, so no
request path ever names a file. The Content-Security-Policy lets the page load only
from this origin, and the page calls only ``/models`` and ``/predict``.
"""

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UI_DIR = Path(__file__).resolve().parent / "ui"
FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
UI_PATHS = tuple(FILES)
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def build_ui_app() -> Starlette:
    def page(body: bytes, media_type: str):
        async def serve(request: Request) -> Response:
            return Response(body, media_type=media_type, headers=HEADERS)

        return serve

    routes = [
        Route(path, page((UI_DIR / name).read_bytes(), media_type), methods=["GET"])
        for path, (name, media_type) in FILES.items()
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # like the prediction app: no Host-built redirects
    return app
