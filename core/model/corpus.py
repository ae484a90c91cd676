"""A deterministic bilingual (Chinese + English) pre-training corpus from the four verticals' domains.

All of it is SYNTHETIC except the statute text (real PRC and EU articles, see ``statutes``). Each
generator draws a structured case (a transaction, a CT finding, a sensor trend, a legal dispute) and
writes it up in English and Chinese, once as a plain document and once as a DeepSeek-format chat
(system / user / assistant). The write-ups follow the case's logic -- a larger nodule gets a higher
Lung-RADS category and a shorter follow-up, a faster vibration rise a more urgent inspection -- so the
model learns domain relations, not only domain words. Everything is driven by one ``random.Random(seed)``:
the same seed gives the same corpus, byte for byte.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from core.model import statutes

Pair = tuple[str, str]  # (English, Chinese)
Messages = list[dict[str, str]]


@dataclass
class Sample:
    """One case written up as documents and chats in both languages."""

    domain: str
    documents: list[str] = field(default_factory=list)
    chats: list[Messages] = field(default_factory=list)


def _chat(system: str, user: str, assistant: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": assistant}]


def _pick(rng: random.Random, pool):
    return pool[rng.randrange(len(pool))]


SYSTEM = {
    "finance": ("You are a fraud analyst assistant. Explain risk decisions clearly.",
                "你是一名反欺诈分析助手，请清楚地解释风险决策。"),
    "medical": ("You are a radiology assistant. Write concise, structured chest CT reports.",
                "你是一名放射科助手，请撰写简洁、规范的胸部CT报告。"),
    "manufacturing": ("You are a maintenance engineer assistant. Give actionable advice from sensor trends.",
                      "你是一名设备维护助手，请根据传感器趋势给出可执行的建议。"),
    "legal": ("You are a legal research assistant. Cite the statute that applies.",
              "你是一名法律研究助手，请引用适用的法律条文。"),
}

# ---------------------------------------------------------------------------------------------
# Finance: card / transfer fraud alerts and their explanations.

MERCHANTS: list[Pair] = [("electronics", "电子产品"), ("jewellery", "珠宝"), ("online gaming", "网络游戏"),
                         ("gift cards", "礼品卡"), ("grocery", "超市"), ("restaurant", "餐饮"),
                         ("air travel", "航空旅行"), ("cryptocurrency exchange", "加密货币交易所"),
                         ("luxury goods", "奢侈品"), ("pharmacy", "药店"), ("hotel", "酒店"), ("fuel", "加油站")]
CITIES: list[Pair] = [("Shanghai", "上海"), ("Beijing", "北京"), ("Shenzhen", "深圳"), ("Hangzhou", "杭州"),
                      ("Chengdu", "成都"), ("Hong Kong", "香港"), ("Singapore", "新加坡"), ("London", "伦敦"),
                      ("Dubai", "迪拜"), ("Lagos", "拉各斯"), ("Frankfurt", "法兰克福"), ("Bangkok", "曼谷")]
CHANNELS: list[Pair] = [("card-not-present online payment", "线上无卡支付"), ("POS terminal", "POS终端"),
                        ("mobile wallet", "移动钱包"), ("ATM withdrawal", "ATM取现"), ("wire transfer", "电汇")]
HIGH_RISK_MERCHANTS = {"online gaming", "gift cards", "cryptocurrency exchange", "luxury goods", "jewellery"}


def finance_sample(rng: random.Random, index: int) -> Sample:
    tx = f"TX-{rng.randrange(10**5, 10**6)}"
    avg = rng.choice([180, 260, 420, 650, 900, 1500, 2400])
    ratio = round(rng.choice([0.4, 0.8, 1.1, 1.6, 2.5, 4.0, 6.5, 9.0, 14.0]) * rng.uniform(0.9, 1.1), 1)
    amount = int(avg * ratio)
    merchant, home, city, channel = (_pick(rng, MERCHANTS), _pick(rng, CITIES), _pick(rng, CITIES),
                                     _pick(rng, CHANNELS))
    hour = rng.randrange(24)
    new_device, velocity = rng.random() < 0.3, rng.choice([1, 1, 1, 2, 3, 5, 8])
    reasons: list[Pair] = []
    score = 0.05
    if ratio >= 3:
        score += 0.3 if ratio < 8 else 0.4
        reasons.append((f"the amount is {ratio} times the account's 30-day average of CNY {avg:,}",
                        f"金额是该账户近30天平均消费{avg:,}元的{ratio}倍"))
    if city != home:
        score += 0.2
        reasons.append((f"the payment was made in {city[0]} while the cardholder lives in {home[0]}",
                        f"交易发生在{city[1]}，而持卡人常住{home[1]}"))
    if new_device:
        score += 0.15
        reasons.append(("it came from a device never seen on this account", "交易来自该账户从未使用过的设备"))
    if hour < 5:
        score += 0.1
        reasons.append((f"it happened at {hour:02d}:{rng.randrange(60):02d}, outside the usual hours",
                        f"交易时间为凌晨{hour}点，不在日常活动时段"))
    if velocity >= 3:
        score += 0.15
        reasons.append((f"{velocity} transactions were attempted within ten minutes",
                        f"十分钟内连续发起{velocity}笔交易"))
    if merchant[0] in HIGH_RISK_MERCHANTS:
        score += 0.1
        reasons.append((f"the merchant category ({merchant[0]}) is frequently used to cash out stolen cards",
                        f"商户类别（{merchant[1]}）常被用于盗刷套现"))
    score = round(min(0.99, score + rng.uniform(-0.04, 0.04)), 2)
    if score >= 0.7:
        level, action = ("high", "高"), ("block the transaction and call the cardholder to confirm",
                                         "拦截该笔交易并致电持卡人核实")
    elif score >= 0.4:
        level, action = ("medium", "中"), ("ask for step-up authentication with a one-time password",
                                           "要求进行短信验证码二次验证")
    else:
        level, action = ("low", "低"), ("approve the transaction and keep monitoring the account",
                                        "放行该笔交易并继续监控账户")
    facts_en = (f"Transaction {tx}: CNY {amount:,} at a {merchant[0]} merchant in {city[0]} via {channel[0]}, "
                f"hour {hour:02d}, new device: {'yes' if new_device else 'no'}, "
                f"transactions in last 10 min: {velocity}, cardholder city: {home[0]}.")
    facts_zh = (f"交易{tx}：在{city[1]}的{merchant[1]}商户通过{channel[1]}消费{amount:,}元，时间{hour}点，"
                f"新设备：{'是' if new_device else '否'}，近十分钟交易笔数：{velocity}，持卡人常住地：{home[1]}。")
    if reasons:
        why_en = "The main reasons are: " + "; ".join(r[0] for r in reasons) + "."
        why_zh = "主要原因：" + "；".join(r[1] for r in reasons) + "。"
    else:
        why_en = "No risk factor stands out: amount, place, device and timing match the account's history."
        why_zh = "未发现明显风险因素：金额、地点、设备和时间均与账户历史一致。"
    expl_en = f"Risk score {score:.2f} ({level[0]} risk). {why_en} Recommended action: {action[0]}."
    expl_zh = f"风险评分{score:.2f}（{level[1]}风险）。{why_zh}建议处置：{action[1]}。"
    sample = Sample("finance")
    sample.documents += [f"Fraud alert. {facts_en} {expl_en}", f"反欺诈预警。{facts_zh}{expl_zh}"]
    sample.chats += [
        _chat(SYSTEM["finance"][0], f"Explain the risk decision for this transaction. {facts_en}", expl_en),
        _chat(SYSTEM["finance"][1], f"请解释这笔交易的风险判断。{facts_zh}", expl_zh),
    ]
    return sample


# ---------------------------------------------------------------------------------------------
# Medical: chest CT findings on lung nodules, impressions with Lung-RADS-style follow-up.

LOBES: list[Pair] = [("right upper lobe", "右肺上叶"), ("right middle lobe", "右肺中叶"),
                     ("right lower lobe", "右肺下叶"), ("left upper lobe", "左肺上叶"),
                     ("left lower lobe", "左肺下叶"), ("lingula", "左肺舌段")]
DENSITY: list[Pair] = [("solid", "实性"), ("solid", "实性"), ("part-solid", "部分实性"), ("ground-glass", "磨玻璃")]
MARGINS: list[Pair] = [("smooth", "边缘光滑"), ("lobulated", "边缘分叶"), ("spiculated", "边缘毛刺")]
OTHER_FINDINGS: list[Pair] = [("No mediastinal lymphadenopathy.", "纵隔内未见肿大淋巴结。"),
                              ("No pleural effusion.", "双侧胸腔未见积液。"),
                              ("Mild centrilobular emphysema.", "轻度小叶中心型肺气肿。"),
                              ("Heart size is normal.", "心影大小正常。"),
                              ("Scattered coronary artery calcification.", "冠状动脉散在钙化。")]


LUNG_RADS: list[tuple[str, Pair]] = [
    ("2", ("annual low-dose CT screening", "每年低剂量CT筛查")),
    ("3", ("low-dose CT follow-up in 6 months", "6个月后低剂量CT复查")),
    ("4A", ("low-dose CT in 3 months; PET/CT may be considered", "3个月后低剂量CT复查，可考虑PET/CT")),
    ("4B", ("chest CT with contrast or PET/CT, and tissue sampling as appropriate", "增强CT或PET/CT检查，必要时穿刺活检")),
]


def medical_sample(rng: random.Random, index: int) -> Sample:
    size = rng.choice([3, 4, 5, 6, 7, 8, 9, 11, 13, 16, 19, 24])
    lobe, density, margin = _pick(rng, LOBES), _pick(rng, DENSITY), _pick(rng, MARGINS)
    age, pack_years = rng.randrange(45, 81), rng.choice([0, 0, 10, 20, 30, 45])
    others = rng.sample(OTHER_FINDINGS, k=2)
    # Lung-RADS-style category from size (ground-glass nodules are managed less aggressively);
    # spiculated margins raise suspicion by one category.
    effective = size if density[0] != "ground-glass" else size / 3
    level = 0 if effective < 6 else 1 if effective < 8 else 2 if effective < 15 else 3
    if margin[0] == "spiculated" and 0 < level < 3:
        level += 1
    category, follow = LUNG_RADS[level]
    suspicious = category.startswith("4")
    findings_en = (f"Chest CT, {age}-year-old, {pack_years} pack-years. A {size} mm {density[0]} nodule in the "
                   f"{lobe[0]} with {margin[0]} margins. {others[0][0]} {others[1][0]}")
    findings_zh = (f"胸部CT，患者{age}岁，吸烟{pack_years}包年。{lobe[1]}见一{size}毫米{density[1]}结节，{margin[1]}。"
                   f"{others[0][1]}{others[1][1]}")
    impression_en = (f"Impression: {size} mm {density[0]} nodule in the {lobe[0]}, Lung-RADS {category}, "
                     f"{'suspicious for malignancy' if suspicious else 'probably benign'}. "
                     f"Recommendation: {follow[0]}.")
    impression_zh = (f"印象：{lobe[1]}{size}毫米{density[1]}结节，Lung-RADS {category}类，"
                     f"{'可疑恶性' if suspicious else '考虑良性可能大'}。建议：{follow[1]}。")
    sample = Sample("medical")
    sample.documents += [f"Radiology report. Findings: {findings_en} {impression_en}",
                         f"影像报告。所见：{findings_zh}{impression_zh}"]
    sample.chats += [
        _chat(SYSTEM["medical"][0], f"Write the impression for these findings. {findings_en}", impression_en),
        _chat(SYSTEM["medical"][1], f"请根据以下所见写出印象。{findings_zh}", impression_zh),
    ]
    return sample


# ---------------------------------------------------------------------------------------------
# Manufacturing: sensor trends on rotating equipment and the maintenance advice they call for.

EQUIPMENT: list[Pair] = [("centrifugal pump", "离心泵"), ("induction motor", "感应电机"), ("gearbox", "齿轮箱"),
                         ("air compressor", "空压机"), ("CNC spindle", "数控主轴"), ("conveyor drive", "输送机驱动"),
                         ("cooling fan", "冷却风机"), ("hydraulic press", "液压机")]
# (sensor, unit, normal range, likely cause, cause zh, fix, fix zh)
FAULTS = [
    ("vibration RMS", "振动有效值", "mm/s", (1.5, 2.8), "bearing wear", "轴承磨损",
     "inspect the bearings and check the lubrication", "检查轴承并核查润滑情况"),
    ("vibration RMS", "振动有效值", "mm/s", (1.5, 2.8), "shaft misalignment", "轴不对中",
     "check the coupling alignment with a laser tool", "用激光对中仪检查联轴器对中"),
    ("bearing temperature", "轴承温度", "°C", (45, 62), "insufficient lubrication", "润滑不足",
     "re-grease the bearings and verify the grease type", "重新加注润滑脂并确认油脂型号"),
    ("motor current", "电机电流", "A", (18, 24), "mechanical overload", "机械过载",
     "check the load and look for jammed parts", "检查负载并排查卡滞部件"),
    ("discharge pressure", "出口压力", "bar", (5.5, 6.5), "impeller wear or cavitation", "叶轮磨损或气蚀",
     "inspect the impeller and the suction line", "检查叶轮和进口管路"),
    ("acoustic emission", "声发射", "dB", (60, 70), "early gear tooth damage", "齿面早期损伤",
     "take an oil sample and inspect the gear teeth", "取油样化验并检查齿面"),
]


def manufacturing_sample(rng: random.Random, index: int) -> Sample:
    equipment = _pick(rng, EQUIPMENT)
    asset = f"{equipment[0].split()[-1][0].upper()}-{rng.randrange(1, 60):02d}"
    sensor, sensor_zh, unit, (lo, hi), cause, cause_zh, fix, fix_zh = _pick(rng, FAULTS)
    days = rng.choice([2, 3, 5, 7, 10, 14])
    start = round(rng.uniform(lo, hi), 1)
    rise = rng.choice([0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0])  # relative rise over the window
    end = round(start * (1 + rise), 1)
    beyond = max(0.0, (end - hi) / hi)
    health = round(max(0.05, min(0.98, 0.95 - 1.6 * rise - 2.0 * beyond + rng.uniform(-0.03, 0.03))), 2)
    trend = (("stable", "平稳") if rise == 0 else ("rising slowly", "缓慢上升") if rise <= 0.1
             else ("rising steadily", "持续上升") if rise <= 0.35 else ("rising fast", "快速上升"))
    if health >= 0.8:
        advice = ("No action needed; keep the normal inspection schedule.", "无需处理，按正常点检计划执行。")
    elif health >= 0.5:
        advice = (f"Likely early {cause}. Plan to {fix} at the next planned stop.",
                  f"可能为早期{cause_zh}。建议在下次计划停机时{fix_zh}。")
    elif health >= 0.25:
        advice = (f"Likely {cause}. Schedule maintenance within 48 hours: {fix}.",
                  f"可能为{cause_zh}。建议48小时内安排检修：{fix_zh}。")
    else:
        advice = (f"Severe {cause} is likely. Stop the machine as soon as it is safe and {fix}.",
                  f"很可能存在严重{cause_zh}。请在安全条件下尽快停机，并{fix_zh}。")
    reading_en = (f"{equipment[0].capitalize()} {asset}: {sensor} went from {start} to {end} {unit} over {days} days "
                  f"(normal {lo}-{hi} {unit}), trend {trend[0]}.")
    reading_zh = (f"{equipment[1]}{asset}：{sensor_zh}在{days}天内由{start}{unit}变为{end}{unit}"
                  f"（正常范围{lo}-{hi}{unit}），趋势{trend[1]}。")
    answer_en = f"Health score {health:.2f}. {advice[0]}"
    answer_zh = f"健康评分{health:.2f}。{advice[1]}"
    sample = Sample("manufacturing")
    sample.documents += [f"Maintenance note. {reading_en} {answer_en}", f"维护记录。{reading_zh}{answer_zh}"]
    sample.chats += [
        _chat(SYSTEM["manufacturing"][0], f"What maintenance do you advise? {reading_en}", answer_en),
        _chat(SYSTEM["manufacturing"][1], f"请给出维护建议。{reading_zh}", answer_zh),
    ]
    return sample


# ---------------------------------------------------------------------------------------------
# Legal: disputes resolved by citing the statute (text from the real statute databases).

COMPANIES: list[Pair] = [("Huaxin Trading Co.", "华信贸易公司"), ("Dongfang Machinery Ltd.", "东方机械有限公司"),
                         ("Lanting Software Co.", "兰亭软件公司"), ("Jinhai Logistics", "金海物流公司"),
                         ("Ruifeng Foods", "瑞丰食品公司"), ("Hengtai Construction", "恒泰建设公司")]
GOODS: list[Pair] = [("steel pipes", "钢管"), ("server hardware", "服务器设备"), ("medical masks", "医用口罩"),
                     ("solar panels", "太阳能板"), ("textile fabric", "纺织面料"), ("auto parts", "汽车零部件")]

# (law, article, English question template, Chinese question template, English holding, Chinese holding)
PRC_SCENARIOS = [
    ("中华人民共和国民法典", 577,
     "{a} delivered the {g} {d} days late and part of the batch did not meet the agreed standard. Is {a} liable to {b}?",
     "{a}迟延{d}天交付{g}，且部分货物不符合约定标准。{a}是否应向{b}承担责任？",
     "Yes. {a} failed to perform as agreed, so it bears liability for breach: continued performance, remedial measures or damages.",
     "应当承担。{a}履行合同义务不符合约定，应当承担继续履行、采取补救措施或者赔偿损失等违约责任。"),
    ("中华人民共和国民法典", 584,
     "{b} lost a resale profit of CNY {m:,} because {a} never delivered the {g}. Can {b} recover the lost profit?",
     "因{a}未交付{g}，{b}损失转售利润{m:,}元。{b}能否主张该可得利益损失？",
     "Yes, within foreseeability: damages include the benefit {b} would have obtained, capped at what {a} could foresee when contracting.",
     "可以，但以可预见为限：赔偿额包括合同履行后可以获得的利益，但不得超过{a}订立合同时预见到或者应当预见到的损失。"),
    ("中华人民共和国民法典", 590,
     "A typhoon closed the port for {d} days and {a} could not ship the {g}. Is {a} excused?",
     "台风导致港口关闭{d}天，{a}无法发运{g}。{a}能否免责？",
     "Partly or wholly, depending on the impact of the force majeure, provided {a} notified {b} promptly and mitigated the loss.",
     "可以根据不可抗力的影响部分或者全部免责，但{a}应当及时通知{b}并减轻损失。"),
    ("中华人民共和国民法典", 1202,
     "A defect in the {g} made by {a} injured a worker at {b}. Who is liable?",
     "{a}生产的{g}存在缺陷，造成{b}一名员工受伤。由谁承担责任？",
     "{a} as the producer bears tort liability for the damage caused by the defective product.",
     "{a}作为生产者，应当对缺陷产品造成的损害承担侵权责任。"),
    ("中华人民共和国刑法", 266,
     "A caller posing as a bank officer persuaded a customer to transfer CNY {m:,}. What offence is this?",
     "有人冒充银行工作人员诱骗客户转账{m:,}元。构成何罪？",
     "This is fraud: obtaining property by deception; the sentence depends on whether the amount is large, huge or especially huge.",
     "构成诈骗罪：以欺骗手段骗取公私财物，量刑取决于数额较大、巨大或者特别巨大。"),
    ("中华人民共和国个人信息保护法", 13,
     "{a} wants to use customers' transaction histories to train a fraud model. On what basis may it process them?",
     "{a}希望使用客户交易记录训练反欺诈模型，可依据什么处理这些个人信息？",
     "Only on a lawful basis such as consent, necessity for the contract, or a legal obligation; otherwise the processing is unlawful.",
     "只有在取得个人同意、为履行合同所必需或者履行法定义务等情形下方可处理，否则处理行为不合法。"),
    ("中华人民共和国劳动合同法", 87,
     "{a} dismissed an engineer after {d} years without a lawful reason. What compensation is due?",
     "{a}无法定理由解除了一名工作{d}年的工程师的劳动合同，应支付什么赔偿？",
     "Damages at twice the statutory severance standard, that is two months' wage for each year of service.",
     "应当按照经济补偿标准的二倍支付赔偿金，即每满一年支付两个月工资。"),
    ("中华人民共和国安全生产法", 36,
     "The pressure relief valve of a press at {a} had not been inspected for {d} months before an accident. Was there a breach?",
     "{a}的一台压力机安全阀在事故前{d}个月未进行检测。是否违反规定？",
     "Yes. Safety equipment must be regularly maintained and tested so that it runs normally; the missed inspections breach that duty.",
     "是。生产经营单位必须对安全设备进行经常性维护、保养并定期检测，未检测即违反该义务。"),
]
EU_SCENARIOS = [
    ("32016R0679", 33, "{a} discovered a breach of customer data on day {d}. When must it notify the authority?",
     "Without undue delay and, where feasible, within 72 hours of becoming aware of the breach."),
    ("32016R0679", 17, "A former customer of {a} asks for all personal data to be erased. Must {a} comply?",
     "Yes, without undue delay where a ground applies, for example the data are no longer necessary, unless an exception such as a legal obligation applies."),
    ("32024R1689", 6, "{a} sells an AI system that scores creditworthiness. Is it high-risk under the AI Act?",
     "Yes. Creditworthiness evaluation is listed as a high-risk use, so the system must meet the high-risk requirements."),
    ("32024R1689", 50, "{a} deploys a chatbot for customer service. What transparency duty applies?",
     "People must be informed that they are interacting with an AI system unless this is obvious from the context."),
    ("32022R2554", 19, "A payment outage at {a} lasted {d} hours. What must the financial entity do?",
     "Classify the ICT-related incident and, if it is major, report it to the competent authority with initial, intermediate and final reports."),
]


def legal_sample(rng: random.Random, index: int) -> Sample:
    a, b = rng.sample(COMPANIES, k=2)
    goods = _pick(rng, GOODS)
    d, m = rng.choice([3, 5, 7, 12, 20, 30]), rng.choice([50_000, 120_000, 380_000, 900_000])
    sample = Sample("legal")
    law, number, q_en, q_zh, h_en, h_zh = _pick(rng, PRC_SCENARIOS)
    article = statutes.prc_article(law, number)
    law_en = statutes.PRC_LAW_ENGLISH.get(law, law)
    label = article.label if article else f"第{number}条"
    cite_zh = f"《{law}》{label}规定：{article.text}" if article else f"《{law}》{label}。"
    slots_en = dict(a=a[0], b=b[0], g=goods[0], d=d, m=m)
    slots_zh = dict(a=a[1], b=b[1], g=goods[1], d=d, m=m)
    question_en, question_zh = q_en.format(**slots_en), q_zh.format(**slots_zh)
    answer_en = f"Under Article {number} of {law_en}: {h_en.format(**slots_en)}"
    answer_zh = f"根据{cite_zh}\n结论：{h_zh.format(**slots_zh)}"
    sample.documents += [f"Case note. Question: {question_en} Answer: {answer_en}",
                         f"案例分析。问题：{question_zh}\n分析：{answer_zh}"]
    sample.chats += [_chat(SYSTEM["legal"][0], question_en, answer_en),
                     _chat(SYSTEM["legal"][1], question_zh, answer_zh)]
    celex, eu_number, eu_q, eu_h = _pick(rng, EU_SCENARIOS)
    eu = statutes.eu_article(celex, eu_number, max_chars=300)
    act = statutes.EU_CELEX[celex]
    cite = f"Article {eu_number} of the {act}" + (f" ({eu.text.split(' 1. ')[0]})" if eu else "")
    eu_answer = f"Under {cite}: {eu_h}"
    eu_question = eu_q.format(a=a[0], d=d)
    sample.documents.append(f"Compliance note. Question: {eu_question} Answer: {eu_answer}")
    sample.chats.append(_chat(SYSTEM["legal"][0], eu_question, eu_answer))
    return sample


GENERATORS: dict[str, Callable[[random.Random, int], Sample]] = {
    "finance": finance_sample, "medical": medical_sample,
    "manufacturing": manufacturing_sample, "legal": legal_sample,
}


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 0
    # ~3 M characters, ~0.8 M tokens: more than the default build's ~0.4 M training tokens see, so
    # batches rarely repeat, without spending minutes generating text no step will read.
    cases_per_domain: int = 600
    prc_statute_articles: int = 600
    eu_statute_articles: int = 100


@dataclass
class Corpus:
    documents: list[str]
    chats: list[Messages]
    stats: dict

    def tokenizer_texts(self) -> list[str]:
        """Everything the tokenizer should see (chat turns as plain text; special tokens are added apart)."""
        return self.documents + [m["content"] for chat in self.chats for m in chat]


def domain_chats(domain: str, n: int, seed: int = 0) -> list[Messages]:
    """``n`` synthetic chat records for one domain (both languages), e.g. for a quick fine-tune set."""
    if domain not in GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(GENERATORS)}")
    rng = random.Random(f"{seed}-{domain}-chats")
    chats: list[Messages] = []
    while len(chats) < n:
        chats.extend(GENERATORS[domain](rng, len(chats)).chats)
    return chats[:n]


def generate_corpus(spec: CorpusSpec = CorpusSpec()) -> Corpus:
    documents: list[str] = []
    chats: list[Messages] = []
    per_domain: dict[str, int] = {}
    for domain, generate in GENERATORS.items():
        rng = random.Random(f"{spec.seed}-{domain}")  # string seeds hash deterministically
        before = len(documents) + len(chats)
        for i in range(spec.cases_per_domain):
            sample = generate(rng, i)
            documents.extend(sample.documents)
            chats.extend(sample.chats)
        per_domain[domain] = len(documents) + len(chats) - before
    prc = statutes.prc_articles(spec.prc_statute_articles)
    eu = statutes.eu_articles(spec.eu_statute_articles)
    documents += [f"《{a.law}》{a.label}：{a.text}" for a in prc]
    documents += [f"{a.law}, {a.label}: {a.text}" for a in eu]
    rng = random.Random(f"{spec.seed}-shuffle")
    rng.shuffle(documents)
    rng.shuffle(chats)
    stats = {
        "synthetic_records_per_domain": per_domain,
        "real_statute_articles": {"prc": len(prc), "eu": len(eu)},
        "documents": len(documents), "chats": len(chats),
        "characters": sum(map(len, documents)) + sum(len(m["content"]) for c in chats for m in c),
    }
    return Corpus(documents=documents, chats=chats, stats=stats)
