"""Pages shaped like Google Images, Bing Images and DuckDuckGo Images, with their data where the
real ones keep it (modelled on the real captures described in shared/data/real-pages/README.md).

Google: each result is a ``444383007`` record (thumbnail triple on gstatic.com, full-size triple,
the page in a ``"2003"`` record) nested where the 2026 data has it (``data[56][1][0][0][1][0]``),
chips in ``data[1]`` and a "Related searches" block of type-14 records; strings escape ``=``,
``&``, ``<`` and ``>`` as ``\\u003d`` etc., as Google's do. The first page carries the data in one of
the containers Google uses (:data:`LAYOUTS`); more results come as a ``)]}'`` response fetched
when the page is scrolled to the bottom, in decimal (batchexecute) or hex chunk framing, and a
last batch behind a "Show more results" button. Bing: ``a.iusc`` tiles with JSON in their ``m``
attribute, more tiles fetched on scroll, "related searches" links. DuckDuckGo: a page with a
``vqd`` token whose script loads ``/i.js`` JSON batches.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote, quote_plus

THUMB = "https://encrypted-tbn0.gstatic.com/images?q=tbn:ANd9Gc{docid}&usqp=CAU"
LAYOUTS = ("af", "udm2", "jsstring", "jsonparse")  # containers of the first page's data
BATCH_FRAMINGS = ("decimal", "hex")


def google_json(value, escape_depth: int = 0) -> str:
    """JSON as Google writes it into pages: compact, with ``= & < >`` as ``\\u003d`` ... escapes.

    ``escape_depth=1`` escapes them once more inside the strings themselves (``\\\\u003d``), as
    in the captured data whose URLs keep a literal ``\\u003d`` after one decoding.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, code in (("=", "\\u003d"), ("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, "\\" * escape_depth + code)
    return text


def _result(url: str, index: int) -> list:
    """One result item: ``[[{"444383007": [1, [0, docid, thumb, full, ..., {"2003": ...}]]}]]``."""
    docid = f"doc{index}"
    page = f"https://example.org/page/{index}"
    title = f"Result {index}"
    about = f"https://www.google.com/search/about-this-image?img=H4sIAAAA{index}&q={page}&ctx=iv&hl=en-US"
    metadata = {
        "22": False,
        "25": False,
        "2001": [None, None, None, 0, 0, 0, 0, False, False],
        "2003": [
            None,
            f"src{index}",
            page,
            title,
            None,
            None,
            None,
            None,
            None,
            False,
            None,
            None,
            "Example",
            None,
            None,
            None,
            None,
            "example.org",
            *[None] * 6,
            False,
            [None, 2],
            *[None] * 7,
            about,
        ],
        "2008": [None, title],
    }
    record = [
        1,
        [
            0,
            docid,
            [THUMB.format(docid=docid), 187, 270],
            [url, 600, 800],
            None,
            0,
            None,
            None,
            False,
            metadata,
        ],
        None,
        [233, 161, None, None, None, 233, 161, 0, None, 0, None, None, None, True, 0],
        index,
        None,
        None,
        docid,
        1,
    ]
    return [[{"444383007": record}]]


def _related_block(query: str, phrases: list[str]) -> list:
    """The "Related searches" item: a type-7 header record, then a type-14 record per search."""
    header = [
        7,
        None,
        None,
        [233, 0, None, None, None, 233, 0, 0],
        24,
        None,
        None,
        "b-15-0",
        1,
        None,
        None,
        None,
        ["15-0", None, None, "Related searches"],
    ]
    entries = []
    for n, phrase in enumerate(phrases):
        link = f"/search?q={quote_plus(phrase)}&tbm=isch"
        entries.append(
            [
                [
                    {
                        "444383007": [
                            14,
                            None,
                            None,
                            [0, 0, None, None, None, 233, 0, 116],
                            None,
                            None,
                            None,
                            f"rel{n}",
                            *[None] * 20,
                            [
                                phrase,
                                None,
                                link,
                                None,
                                None,
                                phrase,
                                None,
                                None,
                                None,
                                None,
                                None,
                                [None, phrase, None, None, None, None, 2],
                                THUMB.format(docid=f"rel{n}"),
                            ],
                        ]
                    }
                ]
            ]
        )
    return [[{"444383007": header}], [entries]]


def _chips(query: str, labels: list[str]) -> list:
    chips = []
    for n, label in enumerate(labels):
        state = f"q:{query},g_1:{label}:c{n}="
        chips.append(
            [
                label,
                [THUMB.format(docid=f"chip{n}"), None, None, True, [None, 3]],
                f"/search?q={quote_plus(query)}&tbm=isch&chips={quote(state, safe=':,')}",
                None,
                None,
                [None, None, None, None, state],
                n,
            ]
        )
    return [[["g_1", chips]]]


def google_data(
    urls: list[str],
    start: int = 0,
    thumbs_only: bool = False,
    query: str = "",
    related: list[str] = (),
    chips: list[str] = (),
) -> list:
    """The result data of one page or batch, nested as in the 2026 capture."""
    items = []
    for index, url in enumerate(urls, start=start):
        item = _result(url, index)
        if thumbs_only:
            item[0][0]["444383007"][1][3] = None
        items.append(item)
    if related:
        items.append(_related_block(query, list(related)))
    data: list = [None] * 58
    data[1] = _chips(query, list(chips)) if chips else None
    data[56] = [None, [[[None, [items]]]]]
    return data


def _callback(key: str, data) -> str:
    return (
        f"<script nonce=\"n\">AF_initDataCallback({{key: '{key}', hash: '2', "
        f"data:{google_json(data)}, sideChannel: {{}}}});</script>"
    )


def _container(layout: str, data) -> str:
    """The first page's data in one of the containers Google has used."""
    if layout == "af":
        return _callback("ds:1", data)
    if layout == "udm2":  # udm=2 pages: an object assigned inside a plain script
        return (
            '<script nonce="n">(function(){var m='
            + google_json(data)
            + ";window.W_jd=window.W_jd||{};window.W_jd['ds:1']=m;})();</script>"
        )
    if layout == "jsstring":  # a JavaScript string holding the JSON, quotes escaped
        literal = json.dumps(google_json(data), ensure_ascii=False)
        return f'<script nonce="n">var data = {literal};window.W_jd = JSON.parse(data);</script>'
    if layout == "jsonparse":  # JSON.parse('...'), the escapes doubled
        body = google_json(data, escape_depth=1).replace("\\", "\\\\").replace("'", "\\'")
        return f"<script nonce=\"n\">window.W_jd = JSON.parse('{body}');</script>"
    raise ValueError(f"unknown layout {layout}")


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


def google_results(
    query: str,
    urls: list[str],
    tiles_only: bool = False,
    layout: str = "af",
    related: list[str] = (),
    chips: list[str] = (),
) -> str:
    """The first result page; ``tiles_only`` hides the full-size URLs from the data."""
    tiles = "".join(
        f'<div class="tile" data-docid="doc{i}" data-lpage="https://example.org/page/{i}"'
        + (f' data-full="{html.escape(url)}"' if tiles_only else "")
        + f'><img src="{html.escape(THUMB.format(docid=f"doc{i}"))}" alt=""></div>'
        for i, url in enumerate(urls)
    )
    decoy = [["https://www.google.com/logos/doodles/decoy.png", 200, 300]]
    data = google_data(urls, thumbs_only=tiles_only, query=query, related=related, chips=chips)
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} - Google Search</title>"
        f"{_STYLE}</head><body>"
        f"{_callback('ds:0', decoy)}"
        f"{_container(layout, data)}"
        f'<div id="grid">{tiles}</div>'
        '<input type="button" id="more" value="Show more results" style="display:none">'
        '<img id="preview" alt="">'
        f"{_SPACER}"
        f"{_GOOGLE_SCRIPT % {'query': json.dumps(query)}}</body></html>"
    )


def google_batch(urls: list[str], start: int, framing: str = "decimal") -> str:
    """A ``)]}'`` response with more results.

    ``decimal``: batchexecute, the data as a JSON string in a ``wrb.fr`` envelope, each part after
    a line giving its length. ``hex``: ``<hex length>;<chunk>`` parts as in the 2019 capture (an
    id, a counter, the data, a counter, an empty chunk).
    """
    data = google_json(google_data(urls, start))
    if framing == "hex":
        chunks = ['["batch%d"]\n' % start, "[2]\n", data + "\n", "[9]\n", ""]
        return ")]}'\n" + "".join(f"{len(chunk):x};{chunk}" for chunk in chunks)
    envelope = json.dumps([["wrb.fr", "HoAMBc", data, None, None, None, "generic"]])
    tail = json.dumps([["di", 42], ["af.httprm", 41, "-123", 7]])
    return f")]}}'\n\n{len(envelope)}\n{envelope}\n{len(tail)}\n{tail}\n"


def js_challenge_page(query: str) -> str:
    """What Google serves some automated requests instead of results: a page whose script must
    prove JavaScript runs (it never passes here), with a <noscript> way out to enablejs."""
    retry = "/httpservice/retry/enablejs?sei=fixture"
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} - Google Search</title></head><body>"
        f'<noscript><meta content="0;url={retry}" http-equiv="refresh">'
        f'<div style="display:block">Please click <a href="{retry}">here</a> if you are not '
        "redirected within a few seconds.</div></noscript>"
        '<script nonce="n">(function(){var c=document.createElement("div");c.id="challenge";'
        "document.body.appendChild(c);})();</script>"
        '<div style="display:none">If you\'re having trouble accessing Google Search, please '
        f'<a href="/search?q={quote_plus(query)}&emsg=SG_REL">click here</a>.</div>'
        "</body></html>"
    )


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


def _bing_related(query: str, phrases: list[str]) -> str:
    """The "Top suggestions for ..." block above the results, as the 2026 pages have it."""
    links = "".join(
        f'<div class="sug text underline"><a class="itm " aria-label="{html.escape(phrase)}" '
        f'title="Search for: {html.escape(phrase)}" '
        f'href="/images/search?q={quote_plus(phrase)}&amp;FORM=IRMHRS" h="ID=images,{5520 + n}.1">'
        f'<img height="42" width="42" alt="{html.escape(phrase)}"/>'
        f'<div class="it">{html.escape(phrase)}</div></a></div>'
        for n, phrase in enumerate(phrases)
    )
    return (
        '<div id="miniheader_data"><span class="relatedGroup" type="RelatedSearch">'
        f'<div class="lt"><h2>Top suggestions for {html.escape(query)}</h2></div>'
        f'<div Id="header_smarttabs" class="header_exp col">{links}</div></span></div>'
    )


def bing_results(query: str, first_urls: list[str], related: list[str] = ()) -> str:
    script = _BING_SCRIPT % {"next": len(first_urls), "q": json.dumps(query)}
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} - Bing images</title></head>"
        f'<body><div id="bnp_container"><button id="bnp_btn_accept">Accept</button></div>'
        f"{_bing_related(query, list(related)) if related else ''}"
        f'<ul id="list">{bing_tiles(first_urls, 0)}</ul>{_SPACER}{script}</body></html>'
    )


# -- DuckDuckGo ------------------------------------------------------------------------------

_DDG_SCRIPT = """
<script>
DDG.deep.initialize('/d.js?q=' + encodeURIComponent(%(q)s) + '&l=wt-wt&s=0&ct=US&vqd=%(vqd)s');
async function loadImages(path) {
  const response = await fetch(path);
  if (response.status !== 200) return null;
  const data = await response.json();
  const list = document.getElementById('images');
  for (const result of data.results) {
    const tile = document.createElement('div');
    tile.className = 'tile tile--img';
    tile.innerHTML = '<img class="tile--img__img" src="' + result.thumbnail + '">';
    list.appendChild(tile);
  }
  return data.next;
}
let next = null;
loadImages('/i.js?l=wt-wt&o=json&q=' + encodeURIComponent(%(q)s) + '&vqd=%(vqd)s&f=,,,,,&p=1')
  .then((following) => { next = following; });
</script>"""


def ddg_page(query: str, vqd: str) -> str:
    """The image results page: a ``vqd`` token in its script, which loads the first batch."""
    return (
        f"<!doctype html><html><head><title>{html.escape(query)} at DuckDuckGo</title>"
        "<script>window.DDG={deep:{initialize(){}}};</script></head><body>"
        f'<input id="search_form_input" value="{html.escape(query)}">'
        f'<div id="images" class="tile-wrap"></div>{_SPACER}'
        f"{_DDG_SCRIPT % {'q': json.dumps(query), 'vqd': vqd}}</body></html>"
    )


def ddg_results(query: str, vqd: str, urls: list[str], start: int, total: int) -> str:
    """One ``i.js`` batch: results with image, page and Bing thumbnail; ``next`` until the end."""
    results = [
        {
            "height": 600,
            "image": url,
            "image_token": f"tok{n}",
            "source": "Bing",
            "thumbnail": f"https://tse{n % 4 + 1}.mm.bing.net/th?id=OIP.ddg{n}&pid=Api",
            "thumbnail_token": f"th{n}",
            "title": f"Image {n}",
            "url": f"https://example.com/ddg/{n}",
            "width": 800,
        }
        for n, url in enumerate(urls, start=start)
    ]
    following = start + len(urls)
    answer = {
        "ads": None,
        "query": query,
        "queryEncoded": quote_plus(query),
        "response_type": "images",
        "results": results,
        "vqd": {query: vqd},
    }
    if following < total:
        answer["next"] = (
            f"i.js?l=wt-wt&o=json&q={quote_plus(query)}&vqd={vqd}&f=,,,,,&p=1&s={following}&u=bing"
        )
    return json.dumps(answer)


def ddg_anomaly_page() -> str:
    """DuckDuckGo's bot check, served instead of results."""
    return (
        "<!doctype html><html><head><title>DuckDuckGo</title></head><body>"
        '<div class="anomaly-modal__modal"><div class="anomaly-modal__title">Unfortunately, bots '
        "use DuckDuckGo too.</div><p>Please complete the following challenge to confirm this "
        'search was made by a human.</p><form id="challenge-form" action="/anomaly.js?sv=1" '
        'method="POST"><button>Submit</button></form></div></body></html>'
    )


def quote_url(url: str) -> str:
    return quote(url, safe="")
