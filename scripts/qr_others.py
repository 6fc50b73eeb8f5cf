"""Scores other QR decoders on a folder of images with their payloads beside them
(`NAME.png` and `NAME.txt`, as `cargo bench -p qrcash-hardware --bench qr -- --dump DIR`
writes them): zxing-cpp and OpenCV's WeChat QR detector (without its CNN models, which
install from GitHub rather than from PyPI), both from PyPI. A decode counts only if the exact
payload comes out; the time is the decoder call on the already loaded grey image.

Usage: qr_others.py DIR   (prints one line per decoder: decoded/total, median, p90, p99 ms,
                            then per class decoded counts)
"""

import math
import pathlib
import sys
import time

import cv2
import zxingcpp


def percentile(sorted_ms, p):
    if not sorted_ms:
        return 0.0
    i = max(1, min(len(sorted_ms), math.ceil(p * len(sorted_ms)))) - 1
    return sorted_ms[i]


def zxing(img):
    found = zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode)
    return [r.text for r in found]


def main():
    folder = pathlib.Path(sys.argv[1])
    images = sorted(folder.glob("*.png"))
    wechat = cv2.wechat_qrcode_WeChatQRCode()
    decoders = {
        "zxing-cpp": zxing,
        "OpenCV WeChat (no CNN)": lambda img: list(wechat.detectAndDecode(img)[0]),
    }
    for name, decode in decoders.items():
        times, ok, per_class = [], 0, {}
        for path in images:
            payload = path.with_suffix(".txt").read_text()
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            start = time.perf_counter()
            texts = decode(img)
            times.append((time.perf_counter() - start) * 1e3)
            hit = payload in texts
            ok += hit
            cls = path.stem.rsplit("-", 1)[0].split("-", 1)[1]
            per_class.setdefault(cls, [0, 0])
            per_class[cls][0] += hit
            per_class[cls][1] += 1
        times.sort()
        print(
            f"{name}: decoded {ok}/{len(images)}; median {percentile(times, 0.5):.1f} ms, "
            f"p90 {percentile(times, 0.9):.1f} ms, p99 {percentile(times, 0.99):.1f} ms"
        )
        print("  " + ", ".join(f"{c} {n}/{t}" for c, (n, t) in sorted(per_class.items())))


if __name__ == "__main__":
    main()
