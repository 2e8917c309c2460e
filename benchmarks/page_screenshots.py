"""Screenshots of the service's page in headless Chromium, one per case (the
docs/ pictures): starts `cmfl_jax.serve --workdir=DIR --align --explain` on a
free localhost port, uploads each image through the page's file input, opens
the details section and saves the whole page as PNG.

  python benchmarks/page_screenshots.py --workdir=DIR --out=docs \
      real=astronaut.png gan=face.png unsure=small.png two_faces=two.png error=notes.png

Needs chromium and chromedriver (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import _free_port, _wait_ready  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", default="docs")
  parser.add_argument("--server_args", default="--align --explain",
                      help="flags of cmfl_jax.serve, in one string")
  parser.add_argument("cases", nargs="+", help="NAME=IMAGE: docs/page_NAME.png from IMAGE")
  args = parser.parse_args()
  from selenium import webdriver
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  os.makedirs(args.out, exist_ok=True)
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, "-m", "cmfl_jax.serve", f"--workdir={args.workdir}",
                           f"--port={port}", *args.server_args.split()],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  os.environ["SE_OFFLINE"] = "true"
  options = webdriver.ChromeOptions()
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1000,1000", "--hide-scrollbars"):
    options.add_argument(arg)
  options.binary_location = shutil.which("chromium") or ""
  driver = None
  try:
    _wait_ready(url, proc, timeout=600)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")),
                              options=options)
    for case in args.cases:
      name, image = case.split("=", 1)
      driver.get(url + "/")
      driver.find_element(By.ID, "file").send_keys(os.path.abspath(image))
      WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith(
          ("Checked", "Could not")))
      time.sleep(0.5)  # the preview image and its boxes
      if driver.find_element(By.ID, "result").is_displayed():
        driver.execute_script("document.getElementById('details').open = true;")
      height = driver.execute_script("return document.body.scrollHeight")
      driver.set_window_size(1000, max(600, height + 40))
      path = os.path.join(args.out, f"page_{name}.png")
      if not driver.save_screenshot(path):
        raise SystemExit(f"could not write {path}")
      print(path, driver.find_element(By.ID, "status").text)
  finally:
    if driver:
      driver.quit()
    proc.terminate()
    proc.wait(30)


if __name__ == "__main__":
  main()
