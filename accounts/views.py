from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.client_ip import client_ip_address
from accounts.forms import (
    ApiKeyForm,
    InvitationCreateForm,
    InvitationNewAccountForm,
    MemberForm,
    TeamCreateForm,
    api_key_form_initial,
)
from accounts.invitations import invitation_accept, invitation_accept_new_user, invitation_create, invitation_revoke
from accounts.models import ApiKey, Invitation, Membership
from accounts.permissions import role_required
from accounts.roles import Role
from accounts.selectors import (
    SESSION_ORGANISATION_KEY,
    api_key_get,
    api_keys_list,
    invitation_get,
    invitation_pending_get,
    invitations_pending,
    members_list,
    membership_get,
    memberships_for_user,
    teams_list,
)
from accounts.services import (
    api_key_create,
    api_key_revoke,
    api_key_update,
    membership_remove,
    membership_roles_change,
    membership_teams_set,
    team_create,
    user_login_record,
)
from accounts.show_once import show_once_keep, show_once_take
from core.errors import ApplicationError


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        user_login_record(user=form.get_user(), ip_address=client_ip_address(self.request))
        return response


logout_view = auth_views.LogoutView.as_view()


@require_POST
@role_required(allow_without_roles=True)
def organisation_switch(request):
    wanted = request.POST.get("organisation_id", "")
    if wanted.isdigit() and memberships_for_user(user=request.user).filter(organisation_id=int(wanted)).exists():
        request.session[SESSION_ORGANISATION_KEY] = int(wanted)
    return redirect("core:home")


def _form_error(form, exc: ApplicationError) -> None:
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)


# --- API keys ------------------------------------------------------------------------------


@require_GET
@role_required(Role.ADMIN)
def api_key_list(request):
    keys = api_keys_list(organisation=request.org.organisation)
    return render(request, "accounts/api_key_list.html", {"keys": keys})


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_create_view(request):
    """POST creates the key and redirects to its one-time page (a reload there creates nothing)."""
    organisation = request.org.organisation
    form = ApiKeyForm(request.POST if request.method == "POST" else None, organisation=organisation)
    if request.method == "POST" and form.is_valid():
        try:
            created = api_key_create(
                organisation=organisation, actor=request.org.actor, created_by=request.user, **form.cleaned_data
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            show_once_keep(request, kind="api_key", object_id=created.api_key.id, secret=created.secret)
            return redirect("accounts:api_key_created", key_id=created.api_key.id)
    return render(request, "accounts/api_key_form.html", {"form": form})


@never_cache
@require_GET
@role_required(Role.ADMIN)
def api_key_created(request, key_id: int):
    """The secret of a key just made, shown once to the session that made it; afterwards (a reload,
    another admin) the page says it was shown already. Sent with no-store: no cache keeps it."""
    try:
        key = api_key_get(organisation=request.org.organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None
    secret = show_once_take(request, kind="api_key", object_id=key.id)
    return render(request, "accounts/api_key_created.html", {"key": key, "secret": secret})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_edit(request, key_id: int):
    """Change a key's name, team, expiry, scopes and limits; its secret stays. Revoked keys are read-only."""
    organisation = request.org.organisation
    try:
        key = api_key_get(organisation=organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None
    if key.revoked_at is not None:
        return render(request, "accounts/api_key_edit.html", {"key": key, "form": None}, status=409)
    form = ApiKeyForm(
        request.POST if request.method == "POST" else None, organisation=organisation, initial=api_key_form_initial(key)
    )
    if request.method == "POST" and form.is_valid():
        try:
            api_key_update(api_key=key, actor=request.org.actor, **form.cleaned_data)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"API key {key.name} ({key.prefix}…) saved. Proxies apply it within 2 seconds.")
            return redirect("accounts:api_key_list")
    return render(request, "accounts/api_key_edit.html", {"key": key, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_revoke_view(request, key_id: int):
    try:
        key = api_key_get(organisation=request.org.organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None
    if request.method == "POST":
        api_key_revoke(api_key=key, actor=request.org.actor)
        messages.success(
            request, f"API key {key.name} ({key.prefix}…) revoked. It stops working everywhere within 2 seconds."
        )
        return redirect("accounts:api_key_list")
    return render(request, "accounts/api_key_revoke.html", {"key": key})


# --- members and teams ---------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_list(request):
    """Members, pending invitations, and the invitation form. A POST that invites redirects here with
    `?invitation=<id>`; that GET shows the new link once (kept in the session), a reload no more. The page
    is the same whether or not a user of the invited name or address exists."""
    organisation = request.org.organisation
    form = InvitationCreateForm(request.POST if request.method == "POST" else None, organisation=organisation)
    if request.method == "POST" and form.is_valid():
        try:
            created = invitation_create(
                organisation=organisation, actor=request.org.actor, invited_by=request.user, **form.cleaned_data
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            show_once_keep(request, kind="invitation", object_id=created.invitation.id, secret=created.link)
            return redirect(f"{reverse('accounts:member_list')}?invitation={created.invitation.id}")
    created = None
    wanted = request.GET.get("invitation", "")
    if request.method == "GET" and wanted.isdigit():
        try:
            invitation = invitation_get(organisation=organisation, invitation_id=int(wanted))
        except Invitation.DoesNotExist:
            invitation = None
        if invitation is not None:
            link = show_once_take(request, kind="invitation", object_id=invitation.id)
            created = {"invitation": invitation, "link": link}
    context = {
        "members": members_list(organisation=organisation),
        "invitations": invitations_pending(organisation=organisation).prefetch_related("teams"),
        "form": form,
        "created": created,
    }
    return render(request, "accounts/member_list.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_remove(request, membership_id: int):
    """GET asks to confirm; POST takes the member out (never the organisation's last admin)."""
    try:
        membership = membership_get(organisation=request.org.organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None
    if request.method == "GET":
        return render(request, "accounts/member_remove.html", {"membership": membership})
    try:
        membership_remove(membership=membership, actor=request.org.actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.get_username()} removed from the organisation.")
    return redirect("accounts:member_list")


@require_POST
@role_required(Role.ADMIN)
def invitation_revoke_view(request, invitation_id: int):
    try:
        invitation = invitation_get(organisation=request.org.organisation, invitation_id=invitation_id)
    except Invitation.DoesNotExist:
        raise Http404 from None
    invitation_revoke(invitation=invitation, actor=request.org.actor)
    messages.success(request, f"Invitation of {invitation.recipient} withdrawn.")
    return redirect("accounts:member_list")


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept_view(request, token: str):
    """The invited person's page (no sign-in needed to open it). Signed in, they accept as themselves;
    otherwise they sign in first or create an account, which joins the organisation at once."""
    invitation = invitation_pending_get(token=token)
    if invitation is None:
        return render(request, "accounts/invitation_invalid.html", status=404)
    form = InvitationNewAccountForm(
        request.POST if request.method == "POST" and not request.user.is_authenticated else None,
        initial={"email": invitation.email},
    )
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                membership = invitation_accept(token=token, user=request.user)
            elif form.is_valid():
                data = form.cleaned_data
                membership = invitation_accept_new_user(
                    token=token, username=data["username"], password=data["password"], email=data["email"]
                )
                auth_login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
                user_login_record(user=membership.user, ip_address=client_ip_address(request))
            else:
                membership = None
        except ApplicationError as exc:
            if request.user.is_authenticated:
                messages.error(request, exc.message)
            else:
                _form_error(form, exc)
        else:
            if membership is not None:
                request.session[SESSION_ORGANISATION_KEY] = membership.organisation_id
                messages.success(request, f"Welcome to {membership.organisation.name}.")
                return redirect("core:home")
    return render(request, "accounts/invitation_accept.html", {"invitation": invitation, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_edit(request, membership_id: int):
    """A member's roles and teams (the last admin keeps the admin role)."""
    organisation = request.org.organisation
    try:
        membership = membership_get(organisation=organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None
    form = MemberForm(
        request.POST if request.method == "POST" else None,
        organisation=organisation,
        initial={"roles": membership.roles, "teams": list(membership.teams.all())},
    )
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                membership_roles_change(
                    membership=membership, roles=form.cleaned_data["roles"], actor=request.org.actor
                )
                membership_teams_set(membership=membership, teams=form.cleaned_data["teams"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Roles and teams of {membership.user.get_username()} saved.")
            return redirect("accounts:member_list")
    return render(request, "accounts/member_edit.html", {"membership": membership, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def team_list(request):
    organisation = request.org.organisation
    form = TeamCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            team = team_create(organisation=organisation, name=form.cleaned_data["name"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Team {team.name} created.")
            return redirect("accounts:team_list")
    return render(request, "accounts/team_list.html", {"teams": teams_list(organisation=organisation), "form": form})


@role_required()
def coming(request, *, title: str):
    """Placeholder page for sections a later release fills in (members only, like the real pages)."""
    return render(request, "accounts/coming.html", {"title": title})
