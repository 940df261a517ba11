"""Drives Twinlake's web console in headless Chromium (Debian's chromium and chromedriver, through
Selenium) against a running `twinlake serve` holding a simulated fleet, and checks what each
page shows against the SQL API.

    console_browser.py check BASE_URL [SCREENSHOT_DIR]
    console_browser.py anonymous BASE_URL

`check`: every page loads without a console error and shows what SQL says it should; one
screenshot per page goes to SCREENSHOT_DIR when given. `anonymous`: the console of a server with
users refuses a browser without credentials. Prints one line per check; exits non-zero on the
first failure.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def sql(base, query):
    request = urllib.request.Request(
        base + "/api/v1/query",
        data=json.dumps({"sql": query, "format": "json"}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1100", "--lang=en"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("ok:", message)


def open_page(driver, base, fragment):
    """Loads the console at #fragment and waits until its first data is shown."""
    driver.get(base + "/#" + fragment)
    driver.refresh()
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.ready") == "yes")


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def no_console_errors(driver, page):
    errors = console_errors(driver)
    check(not errors, f"{page}: no errors in the browser's console {errors if errors else ''}")


def shot(driver, directory, name):
    if directory:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(900, min(height + 120, 2600)))
        driver.save_screenshot(f"{directory}/{name}.png")
        driver.set_window_size(1400, 1100)


def texts(elements):
    return [element.text for element in elements]


def fleet(driver, base, shots):
    open_page(driver, base, "/fleet")
    no_console_errors(driver, "fleet")
    expected = [row["gateway"] for row in sql(base, "SELECT gateway FROM gateways ORDER BY gateway LIMIT 50")]
    shown = [row.get_attribute("data-gateway") for row in driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")]
    check(shown == expected, f"fleet: the gateways SQL lists, in order ({len(expected)})")
    total = sql(base, "SELECT count(*) AS n FROM gateways")[0]["n"]
    count_text = driver.find_element(By.ID, "fleet-count").text
    check(f"{total} gateways" in count_text, f"fleet: the count of gateways ({count_text})")
    active = {row["gateway"]: row["n"] for row in sql(base,
              "SELECT gateway, count(*) AS n FROM alarms_active "
              "WHERE severity IN ('critical', 'major', 'minor', 'warning') GROUP BY gateway")}
    for row in driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr"):
        gateway = row.get_attribute("data-gateway")
        alarms = int(row.find_element(By.CSS_SELECTOR, "td[data-alarms]").get_attribute("data-alarms"))
        check(alarms == active.get(gateway, 0), f"fleet: {gateway} shows its {alarms} active alarms")
    depots = {row["gateway"]: row["depot"] for row in sql(base,
              "SELECT gateway, json_get_str(value) AS depot FROM twin WHERE entity = gateway AND fragment = 'depot'")}
    first = driver.find_element(By.CSS_SELECTOR, "#fleet tbody tr")
    check(depots[expected[0]] in first.text, f"fleet: {expected[0]}'s depot {depots[expected[0]]}")
    shot(driver, shots, "fleet")

    # Search and sort happen on the server; the URL keeps them.
    search = depots[expected[0]]
    open_page(driver, base, "/fleet?" + urllib.parse.urlencode({"search": search, "sort": "gateway", "order": "desc"}))
    in_depot = sorted((g for g, d in depots.items() if search in d), reverse=True)[:50]
    shown = [row.get_attribute("data-gateway") for row in driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")]
    check(shown == in_depot, f"fleet: searching {search!r}, sorted descending, shows its {len(in_depot)} gateways")
    no_console_errors(driver, "fleet search")


def gateway_page(driver, base, shots):
    # A gateway whose main device has an active alarm: its chart draws the alarm's region.
    alarmed = sql(base, "SELECT gateway, type FROM alarms_active WHERE entity = gateway ORDER BY gateway LIMIT 1")
    check(len(alarmed) == 1, "the simulated fleet has a truck with an active alarm")
    gateway = alarmed[0]["gateway"]
    open_page(driver, base, "/gateway/" + urllib.parse.quote(gateway))
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "series-chart").get_attribute("data-points") is not None)
    no_console_errors(driver, "gateway")
    entities = sorted(row["entity"] for row in sql(base, f"SELECT entity FROM entities WHERE gateway = '{gateway}'"))
    shown = sorted(li.get_attribute("data-entity") for li in driver.find_elements(By.CSS_SELECTOR, "#tree li"))
    check(shown == entities, f"gateway: {gateway}'s tree holds its {len(entities)} entities")
    latest = sql(base, f"SELECT series, value FROM latest WHERE gateway = '{gateway}' ORDER BY entity, type, series")
    rows = driver.find_elements(By.CSS_SELECTOR, "#latest tbody tr")
    check(len(rows) == len(latest), f"gateway: its {len(latest)} latest values")
    for row, expected in zip(rows, latest):
        cells = row.find_elements(By.TAG_NAME, "td")
        shown = float(cells[4].text)
        check(cells[2].text == expected["series"] and abs(shown - expected["value"]) <= 1e-5 * max(1.0, abs(expected["value"])),
              f"gateway: {expected['series']} = {expected['value']} ({cells[4].text})")
    canvas = driver.find_element(By.ID, "series-chart")
    check(int(canvas.get_attribute("data-points")) > 0, "gateway: the chart has points")
    check(int(canvas.get_attribute("data-regions")) >= 1,
          f"gateway: the chart draws the active alarm {alarmed[0]['type']} as a region")
    active = texts(driver.find_elements(By.CSS_SELECTOR, "#alarms tbody tr"))
    check(any(alarmed[0]["type"] in row for row in active), "gateway: the active alarm is listed")
    events = sql(base, f"SELECT count(*) AS n FROM (SELECT time FROM alarms WHERE gateway = '{gateway}' "
                       f"UNION ALL SELECT time FROM events WHERE gateway = '{gateway}')")[0]["n"]
    timeline = driver.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    check(len(timeline) == min(100, events), f"gateway: the timeline's {min(100, events)} alarms and events")
    twin = sql(base, f"SELECT count(*) AS n FROM twin WHERE gateway = '{gateway}'")[0]["n"]
    check(len(driver.find_elements(By.CSS_SELECTOR, "#twin tbody tr")) == twin, f"gateway: its {twin} twin fragments")
    shot(driver, shots, "gateway")

    # The hierarchy as it was: before the first registration there was nothing.
    first = sql(base, f"SELECT min(valid_from) AS t FROM entity_history WHERE gateway = '{gateway}'")[0]["t"]
    before = sql(base, f"SELECT CAST(TIMESTAMP '{first}' - INTERVAL '1 second' AS VARCHAR) AS t")[0]["t"]
    open_page(driver, base, "/gateway/" + urllib.parse.quote(gateway) + "?" + urllib.parse.urlencode({"at": before}))
    check(not driver.find_elements(By.CSS_SELECTOR, "#tree li"), "gateway: no tree before its first registration")
    no_console_errors(driver, "gateway at a time")
    return gateway


def sql_editor(driver, base, gateway, shots):
    query = (f"SELECT time, value FROM measurements WHERE entity = '{gateway}' "
             f"AND series = (SELECT min(series) FROM latest WHERE entity = '{gateway}') ORDER BY time")
    expected = len(sql(base, query))
    open_page(driver, base, "/sql?" + urllib.parse.urlencode({"q": query}))
    WebDriverWait(driver, 30).until(lambda d: " rows in " in d.find_element(By.ID, "status").text)
    no_console_errors(driver, "SQL editor")
    status = driver.find_element(By.ID, "status").text
    check(status.startswith(f"{expected} rows"), f"SQL: the query's {expected} rows ({status})")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#result tbody tr")) == min(100, expected), "SQL: the first page of rows")
    chart = driver.find_element(By.ID, "result-chart")
    check(int(chart.get_attribute("data-points")) == expected, "SQL: a line chart of the time column")
    check(driver.find_element(By.ID, "sql").get_attribute("value") == query, "SQL: the query from the URL")
    shot(driver, shots, "sql")

    # An example of queries/ one click away.
    buttons = driver.find_elements(By.CSS_SELECTOR, "#examples button")
    check(len(buttons) == 20, "SQL: the 20 examples of queries/")
    buttons[15].click()
    WebDriverWait(driver, 30).until(lambda d: " rows in " in d.find_element(By.ID, "status").text)
    example = driver.find_element(By.ID, "sql").get_attribute("value")
    rows = len(sql(base, example))
    check(driver.find_element(By.ID, "status").text.startswith(f"{rows} rows"), f"SQL: example {buttons[15].text} gives SQL's {rows} rows")
    check("q=" in driver.current_url, "SQL: the example's query is in the URL")

    # Errors as the API gives them.
    open_page(driver, base, "/sql?" + urllib.parse.urlencode({"q": "SELECT nothing FROM nowhere"}))
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result [data-error]"))
    error = driver.find_element(By.CSS_SELECTOR, "#result [data-error]").text
    check("nowhere" in error, f"SQL: the API's error is shown ({error[:80]})")
    # The browser logs the API's 400 itself; nothing else may be logged.
    unexpected = [e for e in console_errors(driver) if "status of 400" not in e["message"]]
    check(not unexpected, f"SQL error: nothing in the console but the API's 400 {unexpected or ''}")

    # 100,000 points draw as a chart without holding the page.
    many = "SELECT to_timestamp_seconds(value) AS time, sin(value / 1000.0) AS wave FROM generate_series(1, 100000)"
    open_page(driver, base, "/sql?" + urllib.parse.urlencode({"q": many}))
    WebDriverWait(driver, 60).until(lambda d: " rows in " in d.find_element(By.ID, "status").text)
    chart = driver.find_element(By.ID, "result-chart")
    check(int(chart.get_attribute("data-points")) == 100000, "SQL: 100,000 points charted")
    print("figure: drawing 100,000 points took", chart.get_attribute("data-draw-ms"), "ms")
    no_console_errors(driver, "SQL editor, 100,000 points")


def ingest(driver, base, shots):
    open_page(driver, base, "/ingest")
    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#messages-rate .value").text != "…")
    no_console_errors(driver, "ingest health")
    with urllib.request.urlopen(base + "/metrics") as response:
        metrics = response.read().decode()
    received = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("twinlake_mqtt_messages_received_total"))
    shown = float(driver.find_element(By.CSS_SELECTOR, "#messages-total .value").text)
    check(shown >= received, f"ingest: messages received ({shown:.0f}, /metrics said {received:.0f} before)")
    reasons = texts(driver.find_elements(By.CSS_SELECTOR, "#rejected-reasons tbody tr"))
    rejected = sql(base, "SELECT reason_code, count(*) AS n FROM rejected GROUP BY reason_code")
    for row in rejected:
        check(any(row["reason_code"] in line for line in reasons), f"ingest: rejected for {row['reason_code']}")
    latest = driver.find_elements(By.CSS_SELECTOR, "#rejected-latest tbody tr")
    check(len(latest) == min(20, sum(row["n"] for row in rejected)), "ingest: the latest rejected messages")
    tables = texts(driver.find_elements(By.CSS_SELECTOR, "#tables tbody tr"))
    check(any(line.startswith("measurements") for line in tables), "ingest: rows per table")
    shot(driver, shots, "ingest")


def anonymous(driver, base):
    driver.get(base + "/")
    time.sleep(1)
    statuses = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] != "Network.responseReceived" or event["params"]["type"] != "Document":
            continue
        # The browser's own start page may be logged too.
        if event["params"]["response"]["url"].startswith(base):
            statuses.append(event["params"]["response"]["status"])
    check(statuses == [401], f"anonymous: the page is refused with 401 ({statuses})")
    check(driver.title != "Twinlake" and not driver.find_elements(By.ID, "page"),
          "anonymous: no console is shown")


def main():
    mode, base = sys.argv[1], sys.argv[2].rstrip("/")
    shots = sys.argv[3] if len(sys.argv) > 3 else None
    driver = browser()
    try:
        if mode == "anonymous":
            anonymous(driver, base)
            return
        fleet(driver, base, shots)
        gateway = gateway_page(driver, base, shots)
        sql_editor(driver, base, gateway, shots)
        ingest(driver, base, shots)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
