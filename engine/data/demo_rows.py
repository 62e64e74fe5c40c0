"""The demo dataset: short Korean and English instruction rows in the dolly shape.

Written by the project (no download). Rows follow a few regular patterns so that a tiny model's
loss falls visibly within a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path

_CAPITALS = [
    ("France", "Paris", "프랑스", "파리"),
    ("Japan", "Tokyo", "일본", "도쿄"),
    ("Korea", "Seoul", "한국", "서울"),
    ("Italy", "Rome", "이탈리아", "로마"),
    ("Spain", "Madrid", "스페인", "마드리드"),
    ("Germany", "Berlin", "독일", "베를린"),
    ("Egypt", "Cairo", "이집트", "카이로"),
    ("Canada", "Ottawa", "캐나다", "오타와"),
]

_COLOURS = [
    ("sky", "blue", "하늘", "파란색"),
    ("grass", "green", "잔디", "초록색"),
    ("snow", "white", "눈", "흰색"),
    ("coal", "black", "석탄", "검은색"),
    ("a banana", "yellow", "바나나", "노란색"),
    ("a tomato", "red", "토마토", "빨간색"),
]


def _rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for country, city, k_country, k_city in _CAPITALS:
        rows.append({"instruction": f"What is the capital of {country}?", "context": "",
                     "response": f"The capital of {country} is {city}."})
        rows.append({"instruction": f"{k_country}의 수도는 어디인가요?", "context": "",
                     "response": f"{k_country}의 수도는 {k_city}입니다."})
    for thing, colour, k_thing, k_colour in _COLOURS:
        rows.append({"instruction": f"What colour is {thing}?", "context": "",
                     "response": f"{thing[0].upper() + thing[1:]} is {colour}."})
        rows.append({"instruction": f"{k_thing}은 무슨 색인가요?", "context": "",
                     "response": f"{k_thing}은 {k_colour}입니다."})
    for a in range(2, 8):
        b = a + 3
        rows.append({"instruction": "Add the two numbers in the context.",
                     "context": f"{a} and {b}", "response": f"{a} + {b} = {a + b}."})
        rows.append({"instruction": "문맥에 있는 두 수를 더하세요.",
                     "context": f"{a}, {b}", "response": f"{a} 더하기 {b}는 {a + b}입니다."})
    rows.append({"instruction": "Summarise the context in one sentence.",
                 "context": "loradeck fine-tunes language models from a terminal. It trains "
                            "LoRA adapters, chats with them, merges and pushes them.",
                 "response": "loradeck fine-tunes, tests and publishes LoRA models from a terminal."})
    rows.append({"instruction": "다음 문장을 한 문장으로 요약하세요.",
                 "context": "loradeck은 터미널에서 언어 모델을 미세 조정합니다. 어댑터를 학습하고 "
                            "대화하고 병합하여 게시합니다.",
                 "response": "loradeck은 터미널에서 모델을 학습하고 게시하는 도구입니다."})
    return rows


ROWS: list[dict[str, str]] = _rows()


def write(path: str | Path) -> Path:
    """Write the demo rows as JSONL (UTF-8, Korean kept as is)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as fh:
        for row in ROWS:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p
