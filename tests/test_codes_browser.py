"""The public scan page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), as a
phone shows it; and the SVG QR rasterised by the browser, then decoded by zxing-cpp."""

from __future__ import annotations

import io
import shutil
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
import zxingcpp
from PIL import Image

from api.main import create_app
from core.settings import DatabaseSettings, Settings
from domain.models import Inspection, Lot
from domain.production import upsert_item
from tests.conftest import free_port
from tests.helpers import SUPER_HEADERS, new_gtin

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def server(db_url, sessionmaker):
    port = free_port()
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=f"http://127.0.0.1:{port}"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 15
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


async def test_scan_page_on_a_phone_and_the_svg_qr_in_the_browser(server, sessionmaker, tmp_path):
    from playwright.async_api import async_playwright
    item, lot_no = f"IT-{uuid.uuid4().hex[:8]}", f"L-{uuid.uuid4().hex[:6].upper()}"
    gtin = new_gtin()  # a GTIN belongs to one item
    async with sessionmaker() as s, s.begin():
        it = await upsert_item(s, item, name="Hydraulic fitting 12 mm", gtin=gtin)
        s.add(Lot(number=lot_no, kind="output", item_id=it.id, quantity=5, quantity_remaining=5, status="released",
                  location="PLANT-2 LINE-4"))
        await s.flush()
        lot_id = (await s.execute(Lot.__table__.select().where(Lot.number == lot_no))).first().id
        s.add(Inspection(number=f"FIN-{lot_no}", kind="final", lot_id=lot_id, status="passed", inspector="J. Doe"))
    async with httpx.AsyncClient(base_url=server, headers=SUPER_HEADERS) as c:
        blk = (await c.post("/api/codes/blocks", json={"key": f"{item}-b", "item": item, "count": 3,
                                                       "lot": lot_no})).json()
        dl = (await c.get(f"/api/codes/blocks/{blk['id']}/codes/2")).json()["digital_link"]
    assert dl.startswith(server)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                      is_mobile=True, has_touch=True)
        resp = await page.goto(dl)
        assert resp is not None and resp.status == 200
        assert await page.locator("#verdict").inner_text() == "Genuine product"
        body = await page.locator("body").inner_text()
        for text in ("Hydraulic fitting 12 mm", lot_no, "PLANT-2 LINE-4", "Passed its inspections"):
            assert text in body
        assert "J. Doe" not in body
        # fits a phone: no sideways scrolling, readable text
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        size = await page.evaluate("parseFloat(getComputedStyle(document.querySelector('dd')).fontSize)")
        assert size >= 14
        await page.screenshot(path=str(tmp_path / "scan.png"), full_page=True)
        # a code that was never issued says so plainly
        resp = await page.goto(f"{server}/01/{gtin}/21/999999999999")
        assert resp is not None and resp.status == 404
        assert await page.locator("#verdict").inner_text() == "Not recognised"
        assert "We did not issue this code" in await page.locator("body").inner_text()
        # the SVG QR, drawn by the browser, decodes to exactly the URI
        await page.set_viewport_size({"width": 600, "height": 600})
        await page.set_extra_http_headers(SUPER_HEADERS)  # the label endpoints are not public
        await page.goto(f"{server}/api/codes/blocks/{blk['id']}/codes/2/qr.svg?scale=6")
        shot = await page.screenshot()
        await browser.close()
    assert [b.text for b in zxingcpp.read_barcodes(Image.open(io.BytesIO(shot)))] == [dl]
