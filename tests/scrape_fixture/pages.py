"""Pages shaped like Google Images and Bing Images, with their data where the real ones keep it.

Google: results as ``["https://...", height, width]`` arrays inside ``AF_initDataCallback`` JSON
(thumbnails on gstatic.com beside them, the page URL in a ``{"2003": [...]}`` record), more
results as a ``)]}'`` batch response fetched when the page is scrolled to the bottom, and a last
batch behind a "Show more results" button. Bing: ``a.iusc`` tiles with JSON in their ``m``
attribute, more tiles fetched on scroll.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

THUMB = "https://encrypted-tbn0.gstatic.com/images?q=tbn:{docid}"


def _result(url: str, index: int) -> list:
    docid = f"doc{index}"
    record = {"2003": [None, docid, f"https://example.org/page/{index}", f"Result {index}"]}
    return [1, [0, docid, [THUMB.format(docid=docid), 180, 240], [url, 600, 800], None, 0,
                "rgb(10,20,30)", None, False, None, None, None, record]]


def google_data(urls: list[str], start: int = 0, thumbs_only: bool = False) -> list:
    items = []
    for index, url in enumerate(urls, start=start):
        item = _result(url, index)
        if thumbs_only:
            item[1][3] = None
        items.append(item)
    return [None, [["GRID_STATE0", None, items]]]


def _callback(key: str, data) -> str:
    return (f"<script nonce=\"n\">AF_initDataCallback({{key: '{key}', hash: '2', "
            f"data:{json.dumps(data)}, sideChannel: {{}}}});</script>")


_GOOGLE_SCRIPT = """
<script>
const QUERY = %(query)s;
let batch = 1;
async function loadBatch() {
  const response = await fetch('/_/VisualFrontendUi/data/batchexecute?rpcids=HoAMBc&batch='
      + batch + '&q=' + encodeURIComponent(QUERY), {method: 'POST'});
  const text = await response.text();
  const grid = document.getElementById('grid');
  for (let i = 0; i < 6; i++) {
    const tile = document.createElement('div');
    tile.className = 'tile';
    grid.appendChild(tile);
  }
  return text;
}
window.addEventListener('scroll', async () => {
  if (batch !== 1) return;
  if (window.innerHeight + window.scrollY < document.body.scrollHeight - 50) return;
  batch = 2;
  document.getElementById('more').style.display = 'block';
  await loadBatch();
});
document.addEventListener('click', async (event) => {
  if (event.target.id === 'more' && batch === 2) {
    batch = 3;
    await loadBatch();
    event.target.style.display = 'none';
  }
  const tile = event.target.closest('[data-full]');
  if (tile) {
    setTimeout(() => { document.getElementById('preview').src = tile.dataset.full; }, 100);
  }
});
</script>
"""

# Keeps every result page scrollable however few results it has, so scrolling fires events.
_SPACER = '<div style="height:1500px"></div>'
_STYLE = "<style>.tile{display:block;width:240px;height:220px;margin:4px;background:#ccc}</style>"


def google_results(query: str, urls: list[str], tiles_only: bool = False) -> str:
    """The first result page; ``tiles_only`` hides the full-size URLs from the data."""
    tiles = "".join(
        f'<div class="tile" data-docid="doc{i}" data-lpage="https://example.org/page/{i}"'
        + (f' data-full="{html.escape(url)}"' if tiles_only else "")
        + f'><img src="{THUMB.format(docid=f"doc{i}")}" alt=""></div>'
        for i, url in enumerate(urls)
    )
    decoy = [["https://www.google.com/logos/doodles/decoy.png", 200, 300]]
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} - Google Search</title>"
        f"{_STYLE}</head><body>"
        f"{_callback('ds:0', decoy)}"
        f"{_callback('ds:1', google_data(urls, thumbs_only=tiles_only))}"
        f'<div id="grid">{tiles}</div>'
        '<input type="button" id="more" value="Show more results" style="display:none">'
        '<img id="preview" alt="">'
        f"{_SPACER}"
        f"{_GOOGLE_SCRIPT % {'query': json.dumps(query)}}</body></html>"
    )


def google_batch(urls: list[str], start: int) -> str:
    """A ``)]}'`` batch response: a JSON document nested as a string in a wrb.fr envelope."""
    envelope = json.dumps(
        [["wrb.fr", "HoAMBc", json.dumps(google_data(urls, start)), None, None, None, "generic"]]
    )
    tail = json.dumps([["di", 42], ["af.httprm", 41, "-123", 7]])
    return f")]}}'\n\n{len(envelope)}\n{envelope}\n{len(tail)}\n{tail}\n"


def consent_page(continue_url: str) -> str:
    hidden = f'<input type="hidden" name="continue" value="{html.escape(continue_url)}">'
    forms = "".join(
        f'<form action="https://consent.google.com/save" method="POST">{hidden}'
        f'<input type="hidden" name="set_eom" value="{eom}"><button>{label}</button></form>'
        for label, eom in (("Reject all", "true"), ("Accept all", "false"))
    )
    return (
        "<!doctype html><html><head><title>Before you continue to Google</title></head><body>"
        f"<h1>Before you continue to Google</h1><p>We use cookies and data to ...</p>{forms}"
        "</body></html>"
    )


def sorry_page() -> str:
    return (
        "<!doctype html><html><head><title>Sorry...</title></head><body>"
        "<p>Our systems have detected unusual traffic from your computer network. This page "
        "checks to see if it's really you sending the requests, and not a robot.</p>"
        '<form id="captcha-form" action="index" method="post">'
        '<div class="g-recaptcha" data-sitekey="x"></div></form></body></html>'
    )


_BING_SCRIPT = """
<script>
let more = true;
window.addEventListener('scroll', async () => {
  if (!more || window.innerHeight + window.scrollY < document.body.scrollHeight - 50) return;
  more = false;
  const response = await fetch('/images/async?first=%(next)d&q=' + encodeURIComponent(%(q)s));
  document.getElementById('list').insertAdjacentHTML('beforeend', await response.text());
});
</script>"""


def unusual_traffic_page() -> str:
    """A block without a 429 or a CAPTCHA form: only the words give it away."""
    return (
        "<!doctype html><html><head><title>Google Search</title></head><body>"
        "<p>Our systems have detected unusual traffic from your computer network. Please try "
        "your request again later.</p></body></html>"
    )


def bing_tiles(urls: list[str], start: int) -> str:
    tiles = []
    for index, url in enumerate(urls, start=start):
        metadata = {
            "murl": url,
            "purl": f"https://example.net/article/{index}",
            "turl": f"https://tse1.mm.bing.net/th?id=OIP.{index}",
        }
        tiles.append(
            f'<li><a class="iusc" style="display:block;height:220px" '
            f'm="{html.escape(json.dumps(metadata))}" href="/images/search?view=detailV2">'
            f'<img src="{metadata["turl"]}" alt=""></a></li>'
        )
    return "".join(tiles)


def bing_results(query: str, first_urls: list[str]) -> str:
    script = _BING_SCRIPT % {"next": len(first_urls), "q": json.dumps(query)}
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} - Bing images</title></head>"
        f'<body><div id="bnp_container"><button id="bnp_btn_accept">Accept</button></div>'
        f'<ul id="list">{bing_tiles(first_urls, 0)}</ul>{_SPACER}{script}</body></html>'
    )


def quote_url(url: str) -> str:
    return quote(url, safe="")
