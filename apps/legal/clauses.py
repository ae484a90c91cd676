"""The labelled contract clauses that contract review is measured on (SYNTHETIC, written for this project).

Every wording has a *topic* (one of the review's risk categories, or ``None`` for boilerplate) and a
label: risky, or safe. Each topic has risky wordings and safe twins in both languages: the twins are
what make review hard (``interest of 4 % per annum`` is safe, ``40 %`` is not), so a method that only
recognises the topic cannot score well. The first risky wording of a topic is the checklist's own.

``DEVELOPMENT`` is the set the methods were built and tuned on. ``UNSEEN`` was written after the
reviewer's code was frozen and is only ever evaluated, never tuned on: it is the honest figure.
Slots: {p}/{P} a party (zh/en), {hi} a digit 5-9 (risky magnitudes; {hz} the same digit in Chinese),
{city} a city.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Wording:
    text: str
    topic: str | None      # risk category the clause is about; None = boilerplate
    risky: bool

    @property
    def label(self) -> str:
        return self.topic if self.risky else "safe"


def _risky(topic: str, *texts: str) -> list[Wording]:
    return [Wording(t, topic, True) for t in texts]


def _safe(topic: str | None, *texts: str) -> list[Wording]:
    return [Wording(t, topic, False) for t in texts]


DEVELOPMENT: tuple[Wording, ...] = tuple(
    _risky("liability_exclusion",
           "{p}对因履行本合同造成的任何损失不承担任何责任，包括人身伤害。",
           "{p}在任何情况下均无须就人身损害或重大过失造成的财产损失进行赔偿。",
           "对于使用本产品导致的一切后果，{p}概不负责。",
           "The {P} shall not be liable for any damage, including death or personal injury.",
           "Under no circumstances will the {P} compensate losses caused by its gross negligence or wilful misconduct.",
           "The {P} accepts no responsibility whatsoever for any loss or injury arising from the services.")
    + _safe("liability_exclusion",
            "除因故意或者重大过失造成的损失及人身损害外，{p}的赔偿责任以合同总价为限。",
            "{p}对其过错造成的损失承担赔偿责任。",
            "The {P}'s liability is capped at the contract price, except for personal injury, fraud or gross negligence.",
            "The {P} shall compensate the other party for losses caused by its breach.")
    + _risky("excessive_penalty",
             "如乙方逾期，应按合同总额百分之{hz}十支付违约金。",
             "逾期一日，乙方须赔付合同价款的{hi}成作为违约赔偿。",
             "任何一方违约的，应向守约方支付相当于合同金额百分之{hz}十的违约金。",
             "Late delivery triggers a penalty of {hi}0% of the contract price.",
             "Any delay obliges the supplier to pay {hi}0 percent of the total price as compensation.",
             "A breaching party shall pay liquidated damages equal to {hi}0% of the contract value.")
    + _safe("excessive_penalty",
            "逾期付款的，按未付金额每日万分之五支付违约金。",
            "乙方逾期交货的，应按合同总额百分之五支付违约金。",
            "Late delivery triggers a penalty of 0.5% of the contract price per week, capped at 5%.",
            "A breaching party shall pay liquidated damages equal to 10% of the contract value.")
    + _risky("unilateral_change",
             "{p}有权随时单方修改本合同条款，无需通知对方。",
             "{p}可根据自身需要自行调整合同内容，对方不得提出异议。",
             "{p}保留随时变更服务内容及收费标准的权利。",
             "The {P} may amend this agreement at any time without notice.",
             "The {P} reserves the right to change the terms whenever it sees fit, without the other party's consent.",
             "The {P} may terminate this agreement at its sole discretion at any time.")
    + _safe("unilateral_change",
            "本合同的任何修改，须经双方协商一致并以书面形式作出。",
            "一方严重违约的，另一方可提前三十日书面通知解除本合同。",
            "Either party may terminate this agreement with 60 days' written notice for material breach.",
            "Any amendment to this agreement requires the written consent of both parties.")
    + _risky("usurious_interest",
             "借款年利率为百分之{hz}十，按月计收。",
             "借款人应按每月{hi}分的利息向出借人支付，逾期加倍。",
             "双方约定借款月利率为百分之{hi}。",
             "The loan bears interest of {hi}0% per annum.",
             "Borrower shall pay {hi}0 percent yearly interest on the outstanding amount.",
             "Interest accrues at {hi}% per month on the principal.")
    + _safe("usurious_interest",
            "出借人与借款人约定年利率为百分之四。",
            "借款按年利率百分之六计息，到期一次还本付息。",
            "The loan bears interest of 4% per annum.",
            "Borrower shall pay 6 percent yearly interest on the outstanding amount.")
    + _risky("probation_too_long",
             "劳动合同期限三年，试用期为十二个月。",
             "乙方入职后需经过为期一年的考察期，考察期内工资按八折发放。",
             "员工试用期为九个月，试用期满经考核合格后转正。",
             "The employment term is three years with a probation period of twelve months.",
             "New hires serve a probationary period of 9 months before confirmation.")
    + _safe("probation_too_long",
            "劳动合同期限三年，试用期为二个月。",
            "员工试用期为三个月，试用期满经考核合格后转正。",
            "The employment term is three years with a probation period of three months.",
            "New hires serve a probationary period of 2 months before confirmation.")
    + _risky("no_overtime_pay",
             "因工作需要安排的加班，公司不另行支付加班费。",
             "员工延长工作时间属于岗位职责的一部分，不再额外计算报酬。",
             "节假日值班视为正常出勤，不计发加班工资。",
             "Employees receive no additional pay for overtime.",
             "Extra hours worked are deemed included in the base salary and are not separately remunerated.",
             "Work on weekends and public holidays is not compensated beyond the monthly salary.")
    + _safe("no_overtime_pay",
            "乙方加班的，公司按照国家规定支付加班工资。",
            "安排员工在休息日工作又不能安排补休的，按工资的百分之二百支付报酬。",
            "Overtime is compensated at 150% of the hourly wage.",
            "Work on public holidays is paid at 300% of the normal daily wage.")
    + _risky("data_without_basis",
             "公司无需经用户同意即可向合作方提供用户个人信息。",
             "用户资料可被本公司自由转让给关联企业及商业伙伴用于营销。",
             "平台可将用户的浏览记录和联系方式出售给第三方。",
             "The {P} may share customer data with any third parties for marketing.",
             "Customer information may be passed on to partners and advertisers at the provider's discretion.",
             "The {P} may sell users' contact details and browsing history to third parties.")
    + _safe("data_without_basis",
            "公司仅在取得用户单独同意后，方可向第三方提供其个人信息。",
            "平台不会向任何第三方出售用户的个人信息。",
            "Personal data is processed only on the basis of the customer's consent and deleted after 12 months.",
            "The {P} shares customer data with processors only under a data processing agreement and with the customer's consent.")
    + _risky("indefinite_retention",
             "公司将永久保存用户的个人信息。",
             "用户注销账户后，其身份资料仍由平台长期留存，不予删除。",
             "平台对用户上传的全部资料无限期保存。",
             "The {P} will retain personal data indefinitely.",
             "Account records, including identity documents, are never deleted, even after the account is closed.",
             "Customer data is kept permanently for the {P}'s business purposes.")
    + _safe("indefinite_retention",
            "公司仅在实现处理目的所必要的期限内保存用户个人信息，服务终止后六个月内删除。",
            "用户注销账户后，平台将在三十日内删除其个人信息。",
            "The {P} will retain personal data for no longer than 12 months after the contract ends.",
            "Account records are deleted within 30 days after the account is closed.")
    + _safe(None,
            "{p}应在收到发票后三十日内支付货款。", "本合同自双方签字盖章之日起生效。",
            "因本合同发生的争议，双方应协商解决；协商不成的，提交{city}仲裁委员会仲裁。",
            "本合同一式两份，双方各执一份，具有同等法律效力。",
            "The {P} shall deliver the goods within 30 days of the order.", "This agreement is governed by the laws of Ireland.",
            "Notices under this agreement shall be sent in writing to the addresses above.",
            "This agreement is made in two counterparts, each of which is an original.")
)

# Written after the reviewer was frozen (see the module docstring); never used to choose anything.
UNSEEN: tuple[Wording, ...] = tuple(
    _risky("liability_exclusion",
           "无论何种原因造成的损害，{p}均免于承担责任。",
           "The {P} disclaims all liability for harm to persons or property, however caused.")
    + _safe("liability_exclusion",
            "{p}因违约给对方造成损失的，应当赔偿实际损失。",
            "Nothing in this agreement limits liability for death or personal injury caused by negligence.")
    + _risky("excessive_penalty",
             "违约方须向对方支付合同总价款百分之{hz}十的违约赔偿金。",
             "The defaulting party must pay the other a sum equal to {hi}0 percent of the fees as liquidated damages.")
    + _safe("excessive_penalty",
            "违约方应支付合同总价款百分之三的违约金。",
            "The defaulting party must pay liquidated damages of 2 percent of the fees.")
    + _risky("unilateral_change",
             "{p}可在任何时候自行决定变更本协议，变更自公布时生效。",
             "The {P} can alter the price and scope of the services whenever it chooses.")
    + _safe("unilateral_change",
            "协议内容的变更应当经双方书面确认后生效。",
            "Changes to the prices take effect only after both parties sign a written addendum.")
    + _risky("usurious_interest",
             "借款利息按年息百分之{hz}十计算。",
             "The borrower will pay interest at a rate of {hi}5% a year.")
    + _safe("usurious_interest",
            "借款利息按年息百分之五计算。",
            "The borrower will pay interest at a rate of 5% a year.")
    + _risky("probation_too_long",
             "新员工须经历十个月的试用期。",
             "Employees are on probation for the first 10 months of employment.")
    + _safe("probation_too_long",
            "新员工须经历一个月的试用期。",
            "Employees are on probation for the first month of employment.")
    + _risky("no_overtime_pay",
             "员工超出标准工时的工作不另给报酬。",
             "Hours beyond the standard working week are unpaid.")
    + _safe("no_overtime_pay",
            "员工超出标准工时的工作按国家规定支付加班费。",
            "Hours beyond the standard working week are paid at 150% of the hourly rate.")
    + _risky("data_without_basis",
             "本公司可自行将会员个人资料提供给广告合作伙伴。",
             "We may disclose members' personal details to our advertising partners without asking them.")
    + _safe("data_without_basis",
            "本公司向广告合作伙伴提供会员个人资料前，将取得会员的单独同意。",
            "We disclose members' personal details to partners only with their explicit consent.")
    + _risky("indefinite_retention",
             "会员资料将被永久存档，不因会员退出而删除。",
             "Member profiles are stored forever, even after membership ends.")
    + _safe("indefinite_retention",
            "会员退出后，会员资料将在九十日内删除。",
            "Member profiles are erased within 90 days after membership ends.")
    + _safe(None,
            "本合同未尽事宜，由双方另行签订补充协议。",
            "The headings in this agreement are for convenience only.")
)


def clause_dataset(wordings: tuple[Wording, ...] = DEVELOPMENT, n_per_template: int = 4, seed: int = 0,
                   name: str = "dev") -> list[dict]:
    """Filled clauses: {"text", "label" (category or "safe"), "topic", "template"} - ``template`` names the
    wording, so an evaluation can hide a clause's own wording from the reference bank."""
    rng = random.Random(seed)
    parties = [("甲方", "Supplier"), ("出租人", "Provider"), ("公司", "Company"), ("平台", "Platform")]
    cities = ["北京", "上海", "深圳", "杭州"]
    out = []
    for t_id, w in enumerate(wordings):
        for _ in range(n_per_template):
            p, P = rng.choice(parties)
            hi = rng.choice("56789")
            out.append({"text": w.text.format(p=p, P=P, hi=hi, hz="零一二三四五六七八九"[int(hi)], city=rng.choice(cities)),
                        "label": w.label, "topic": w.topic, "template": f"{name}:{t_id}"})
    return out
