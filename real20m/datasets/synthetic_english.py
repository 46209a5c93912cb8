"""English texts of the synthetic dataset (``--english``), as the release's English variant has them.

The release keeps an English text file ``<pid>_eng.txt`` beside each Chinese ``<pid>.txt``, with
the same line layout, and adds the English query as a 4th column of the train file. Here an
item's English texts are written from its attributes, each translated by its style's glossary
(``Style.english``), around English shop and video phrases. They draw from random streams of their
own, so the Chinese files are the same bytes with or without ``--english``.
"""
from real20m.datasets.synthetic_drawing import caption_or_title, maybe_null, pick

BRANDS = ("Lumi", "Cotton Home", "South Wind", "First Sight", "Green Field", "Antler", "Cloud Nine", "Maple Lane")
SHOP_WORDS = ("new", "free shipping", "best seller", "hot sale", "authentic", "special offer", "classic",
              "trendy", "clearance", "flash sale", "official store", "spring 2024", "slim fit", "stylish",
              "premium look")
CHATTER = ("hi everyone", "sharing a find today", "this is amazing", "so pretty", "link below", "go get it",
           "unboxing", "try-on", "great value", "hidden gem", "#musthave", "#ootd", "you need this",
           "like and follow", "bought it again")


def query(item, glossary) -> str:
    """The item's query in English: its attributes, translated, in the Chinese query's order."""
    return " ".join(glossary[word] for word in item.attributes)


def mention(rng, item, glossary) -> str:
    """The category with one or two of the other attributes, as a seller or a video names it."""
    others = [glossary[word] for word in item.attributes if word != item.category]
    return " ".join(pick(rng, others, k=int(rng.integers(1, 3))) + [glossary[item.category]])


def goods_text_lines(rng, pid, item, glossary) -> list[str]:
    """itemid, category, brand, entity, title, description: the goods text layout."""
    brand, category = pick(rng, BRANDS), glossary[item.category]
    words = [glossary[word] for word in item.attributes] + [brand] + pick(rng, SHOP_WORDS, k=int(rng.integers(2, 4)))
    title = " ".join(words[i] for i in rng.permutation(len(words)))
    description = f"This {query(item, glossary)} from {brand} goes with everything."
    return [str(pid), category, maybe_null(rng, brand, 0.1), maybe_null(rng, category, 0.2), title,
            maybe_null(rng, description, 0.3)]


def video_text_lines(rng, item, glossary) -> list[str]:
    """caption, title, text: the video text layout; caption or title is always present."""
    caption = f"{pick(rng, CHATTER)}, {mention(rng, item, glossary)}, {pick(rng, CHATTER)}"
    title = f"{pick(rng, CHATTER)} {mention(rng, item, glossary)} {pick(rng, SHOP_WORDS)}"
    text = ", ".join(pick(rng, CHATTER, k=3)) + f", this {glossary[item.category]}, {pick(rng, CHATTER)}"
    caption, title = caption_or_title(rng, caption, title)
    return [caption, title, maybe_null(rng, text, 0.4)]
