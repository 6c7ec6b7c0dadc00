"""Generates tests/data/data_pipeline/{manifest,units}.jsonl (hand-made, seed 1234)."""
import json, math, random
rng = random.Random(1234)
LEX = ("the a cat dog sat ran on under mat table quickly slowly happy sad house river bright dark "
       "little big old new green blue song voice morning evening walked talked over near far always").split()
man, uni = [], []
for k in range(24):
    n = rng.randint(8, 45)
    t = rng.uniform(0.05, 0.4)
    words = []
    for _ in range(n):
        w = rng.choice(LEX); d = rng.uniform(0.15, 0.5)
        words.append({"word": w, "start": round(t, 3), "end": round(t + d, 3)})
        t += d + rng.choice([0, 0, 0.05, 0.2])
    dur = round(t + rng.uniform(0.1, 0.4), 3)
    split = "train" if k < 20 else "valid"
    uid = f"spk{k % 3}_utt{k:03d}"
    man.append({"id": uid, "audio": f"audio/{uid}.wav", "sample_rate": 16000, "duration": dur, "speaker": f"spk{k%3}",
                "style": "default", "text": " ".join(w["word"] for w in words).capitalize() + ".", "words": words,
                "split": split})
    nh = int(dur * 16000) // 640; npi = int(dur * 12.5); ns = math.ceil(dur)
    def stream(n, vocab, run):
        out = []
        while len(out) < n:
            out += [rng.randrange(vocab)] * rng.randint(1, run)
        return " ".join(map(str, out[:n]))
    uni.append({"id": uid, "audio": f"audio/{uid}.wav", "hubert": stream(nh, 501, 3), "pitch": stream(npi, 64, 4), "style": stream(ns, 100, 2)})
# two broken utterances: missing units, and a word outside the audio
man[5]["id"] = "spk2_nounits"; man[5]["audio"] = "audio/spk2_nounits.wav"
man[7]["words"][-1]["end"] = man[7]["duration"] + 1.0
open("tests/data/data_pipeline/manifest.jsonl", "w").write("".join(json.dumps(m) + "\n" for m in man))
open("tests/data/data_pipeline/units.jsonl", "w").write("".join(json.dumps(u) + "\n" for u in uni))
